// The chat page: one WebSocket per conversation (ws/chat/<id>/). Every answer event carries a sequence number;
// after a dropped connection the page reconnects and asks to resume after the last one it saw, so no token is
// lost or shown twice. `done` carries the whole saved answer, which replaces whatever was streamed.
(() => {
  "use strict";
  const root = document.getElementById("chat");
  if (!root) return;
  const log = document.getElementById("chat-log");
  const form = document.getElementById("ask-form");
  const input = document.getElementById("question");
  const askButton = document.getElementById("ask-button");
  const stopButton = document.getElementById("stop-button");
  const statusLine = document.getElementById("chat-status");
  const docSummary = document.getElementById("doc-summary");
  const csrfToken = root.querySelector("input[name=csrfmiddlewaretoken]").value;

  let conversationId = root.dataset.conversation ? Number(root.dataset.conversation) : null;
  let socket = null;
  let closedOnPurpose = false;
  let retryDelay = 500;
  let pendingAsk = null; // an ask typed while the socket was (re)connecting
  // The answer being followed: {id, lastSeq, el, done}
  let following = null;

  const streaming = JSON.parse(document.getElementById("streaming-data").textContent || "null");
  if (streaming) {
    const el = log.querySelector(`article[data-id="${streaming.id}"]`);
    // Resume from the beginning: the page rendered the answer before any token was saved.
    following = { id: streaming.id, lastSeq: 0, el, done: false };
    el.querySelector(".text").textContent = "";
    el.classList.add("streaming");
    setBusy(true);
  }

  function setStatus(text, isError = false) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", isError);
  }

  function setBusy(busy) {
    askButton.disabled = busy;
    stopButton.hidden = !busy;
  }

  function selectedDocuments() {
    return [...form.querySelectorAll("input[name=document_ids]:checked")].map((box) => Number(box.value));
  }

  form.addEventListener("change", () => {
    const count = selectedDocuments().length;
    if (docSummary) docSummary.textContent = count ? `${count} selected` : "all";
  });

  function bubble(role, text) {
    const empty = log.querySelector(".empty-log");
    if (empty) empty.remove();
    const el = document.createElement("article");
    el.className = `bubble ${role}`;
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    el.append(body);
    log.append(el);
    el.scrollIntoView({ block: "end" });
    return el;
  }

  function note(el, className, text) {
    const p = document.createElement("p");
    p.className = `${className} small`;
    p.textContent = text;
    el.append(p);
  }

  function renderCitations(el, citations) {
    el.querySelector(".citations")?.remove();
    if (!citations || !citations.length) return;
    const list = document.createElement("ul");
    list.className = "citations";
    for (const c of citations) {
      const chip = document.createElement("li");
      chip.className = "chip";
      chip.textContent = c.page ? `${c.document_title}, p. ${c.page}` : c.document_title;
      chip.title = c.snippet || "";
      list.append(chip);
    }
    el.append(list);
  }

  function handle(event) {
    if (event.type === "error" && !event.message_id) {
      // Refused before anything was saved (limits, validation): the question can be sent again.
      const wait = event.retry_after ? ` Try again in ${event.retry_after} s.` : "";
      setStatus(`${event.message}${wait}`, true);
      if (!following || following.done) setBusy(false);
      return;
    }
    if (event.type === "start") {
      let el = log.querySelector(`article[data-id="${event.message_id}"]`);
      if (!el) {
        el = bubble("assistant", "");
        el.dataset.id = event.message_id;
      }
      el.classList.add("streaming");
      following = { id: event.message_id, lastSeq: event.seq, el, done: false };
      setBusy(true);
      setStatus("");
      return;
    }
    if (!following || event.message_id !== following.id) return;
    if (event.seq <= following.lastSeq) return; // already shown before a reconnect
    following.lastSeq = event.seq;
    const el = following.el;
    if (event.type === "token") {
      el.querySelector(".text").textContent += event.text;
    } else if (event.type === "citations") {
      renderCitations(el, event.citations);
    } else if (event.type === "error") {
      note(el, "error", event.message);
    } else if (event.type === "done") {
      el.querySelector(".text").textContent = event.content;
      el.classList.remove("streaming");
      if (event.finish_reason === "cancelled") note(el, "muted", "Stopped.");
      if (event.finish_reason === "length") note(el, "muted", "The answer reached its length limit.");
      following.done = true;
      setBusy(false);
      input.focus();
    }
  }

  function connect() {
    if (!conversationId) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/ws/chat/${conversationId}/`);
    socket.addEventListener("open", () => {
      retryDelay = 500;
      setStatus("");
      if (following && !following.done) {
        socket.send(JSON.stringify({ type: "resume", message_id: following.id, after: following.lastSeq }));
      }
      if (pendingAsk) {
        socket.send(JSON.stringify(pendingAsk));
        pendingAsk = null;
      }
    });
    socket.addEventListener("message", (message) => {
      try {
        handle(JSON.parse(message.data));
      } catch (error) {
        console.error("bad chat event", error);
      }
    });
    socket.addEventListener("close", () => {
      socket = null;
      if (closedOnPurpose) return;
      setStatus("Connection lost; reconnecting…");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 8000);
    });
  }

  async function startConversation() {
    const response = await fetch(root.dataset.newUrl, {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken, Accept: "application/json" },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(`could not start a conversation (${response.status})`);
    const data = await response.json();
    conversationId = data.id;
    history.replaceState(null, "", data.url);
    const list = document.querySelector(".conversation-list");
    if (list) {
      list.querySelector(".muted")?.remove();
      const item = document.createElement("li");
      item.className = "active";
      const link = document.createElement("a");
      link.href = data.url;
      link.textContent = input.value.trim().slice(0, 80) || "New conversation";
      item.append(link);
      list.prepend(item);
    }
    connect();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || (following && !following.done)) return;
    const ask = { type: "ask", message: text, document_ids: selectedDocuments() };
    setBusy(true);
    try {
      if (!conversationId) await startConversation();
    } catch (error) {
      setStatus(error.message, true);
      setBusy(false);
      return;
    }
    bubble("user", text);
    input.value = "";
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(ask));
    else pendingAsk = ask;
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  stopButton.addEventListener("click", async () => {
    if (!following || following.done) return;
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "cancel", message_id: following.id }));
      return;
    }
    const url = root.dataset.cancelUrl.replace("/0/", `/${following.id}/`);
    await fetch(url, { method: "POST", headers: { "X-CSRFToken": csrfToken }, credentials: "same-origin" });
  });

  window.addEventListener("pagehide", () => {
    closedOnPurpose = true; // leaving the page does not cancel the answer; it is saved for later
    socket?.close();
  });

  connect();
})();
