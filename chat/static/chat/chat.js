// The chat page: one WebSocket per conversation (ws/chat/<id>/). Every answer event carries a sequence number;
// after a dropped connection the page reconnects and asks to resume after the last one it saw, so no token is
// lost or shown twice. `done` carries the whole saved answer, which replaces whatever was streamed. Answers render
// as sanitized Markdown (markdown.js); the Markdown source of each answer is kept here, not in the page.
(() => {
  "use strict";
  const root = document.getElementById("chat");
  if (!root) return;
  const markdown = window.DocentMarkdown;
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
  // The question sent but not yet accepted ({text, el}): a refusal gives it back to the question box.
  let unanswered = null;

  // ---- answer text: Markdown source per .text element, rendered at most once a frame while streaming ----
  const sources = new WeakMap();
  const dirty = new Set();
  let frame = 0;

  function renderNow(textEl) {
    dirty.delete(textEl);
    markdown.render(sources.get(textEl) || "", textEl);
    textEl.classList.add("md");
  }

  function setAnswer(textEl, text, { now = false } = {}) {
    sources.set(textEl, text);
    if (now) {
      renderNow(textEl);
      return;
    }
    dirty.add(textEl);
    if (!frame) {
      frame = requestAnimationFrame(() => {
        frame = 0;
        // Follow a growing answer only when the reader is at the bottom already, not while they scroll back.
        const page = document.documentElement;
        const atBottom = window.innerHeight + window.scrollY >= page.scrollHeight - 80;
        for (const el of [...dirty]) renderNow(el);
        if (atBottom) window.scrollTo(0, page.scrollHeight);
      });
    }
  }

  function answerText(textEl) {
    return sources.get(textEl) || "";
  }

  for (const textEl of log.querySelectorAll("article.bubble.assistant .text")) {
    setAnswer(textEl, textEl.textContent, { now: true });
  }

  const streaming = JSON.parse(document.getElementById("streaming-data").textContent || "null");
  if (streaming) {
    const el = log.querySelector(`article[data-id="${streaming.id}"]`);
    // Resume from the beginning: the page rendered the answer before any token was saved.
    following = { id: streaming.id, lastSeq: 0, el, done: false };
    setAnswer(el.querySelector(".text"), "", { now: true });
    el.classList.add("streaming");
    el.setAttribute("aria-busy", "true");
    setBusy(true);
  }

  function setStatus(text, isError = false, link = null) {
    statusLine.textContent = text;
    if (link) {
      const a = document.createElement("a");
      a.href = link.href;
      a.textContent = link.text;
      statusLine.append(" ", a);
    }
    statusLine.classList.toggle("error", isError);
  }

  function humanWait(seconds) {
    if (seconds < 120) return `${Math.ceil(seconds)} s`;
    if (seconds < 2 * 3600) return `${Math.round(seconds / 60)} min`;
    if (seconds < 2 * 86400) return `${Math.round(seconds / 3600)} h`;
    return `${Math.round(seconds / 86400)} days`;
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

  // Chips are buttons carrying their passage (the server renders the same markup for saved answers).
  function renderCitations(el, citations) {
    el.querySelector(".citations")?.remove();
    el.querySelector(".passage")?.remove();
    if (!citations || !citations.length) return;
    const list = document.createElement("ul");
    list.className = "citations";
    list.setAttribute("aria-label", "Sources");
    for (const c of citations) {
      const item = document.createElement("li");
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "chip";
      chip.textContent = c.page ? `${c.document_title}, p. ${c.page}` : c.document_title;
      chip.dataset.title = c.document_title;
      chip.dataset.page = c.page ?? "";
      chip.dataset.snippet = c.snippet || "";
      chip.setAttribute("aria-expanded", "false");
      item.append(chip);
      list.append(item);
    }
    el.append(list);
  }

  let passageCount = 0;
  function togglePassage(chip) {
    const article = chip.closest("article");
    const wasOpen = chip.getAttribute("aria-expanded") === "true";
    for (const other of article.querySelectorAll("button.chip")) {
      other.setAttribute("aria-expanded", "false");
      other.removeAttribute("aria-controls");
    }
    article.querySelector(".passage")?.remove();
    if (wasOpen) return;
    const passage = document.createElement("figure");
    passage.className = "passage";
    passage.id = `passage-${++passageCount}`;
    const quote = document.createElement("blockquote");
    quote.textContent = chip.dataset.snippet || "(no excerpt saved)";
    const caption = document.createElement("figcaption");
    const title = document.createElement("cite");
    title.textContent = chip.dataset.title;
    caption.append(title);
    if (chip.dataset.page) caption.append(`, page ${chip.dataset.page}`);
    passage.append(quote, caption);
    chip.closest(".citations").after(passage);
    chip.setAttribute("aria-expanded", "true");
    chip.setAttribute("aria-controls", passage.id);
  }

  log.addEventListener("click", (event) => {
    const chip = event.target.closest("button.chip");
    if (chip) togglePassage(chip);
  });

  function refused(event) {
    // Refused before anything was saved (limits, validation): the question goes back to the box to send again.
    // Limit refusals already say when to retry in their message; others may carry only `retry_after`.
    const limit = event.code === "rate_limited" || event.code === "quota_exceeded";
    const wait = event.retry_after && !limit ? ` Try again in ${humanWait(event.retry_after)}.` : "";
    const plans = event.code === "quota_exceeded" && root.dataset.plansUrl
      ? { href: root.dataset.plansUrl, text: "See plans." } : null;
    setStatus(`${event.message}${wait}`, true, plans);
    if (unanswered) {
      unanswered.el.remove();
      if (!input.value.trim()) input.value = unanswered.text;
      unanswered = null;
    }
    if (!following || following.done) setBusy(false);
  }

  function handle(event) {
    if (event.type === "error" && !event.message_id) {
      refused(event);
      return;
    }
    if (event.type === "start") {
      let el = log.querySelector(`article[data-id="${event.message_id}"]`);
      if (!el) {
        el = bubble("assistant", "");
        el.dataset.id = event.message_id;
      }
      el.classList.add("streaming");
      el.setAttribute("aria-busy", "true"); // screen readers read the answer once it is complete
      following = { id: event.message_id, lastSeq: event.seq, el, done: false };
      unanswered = null;
      setBusy(true);
      setStatus("");
      return;
    }
    if (!following || event.message_id !== following.id) return;
    if (event.seq <= following.lastSeq) return; // already shown before a reconnect
    following.lastSeq = event.seq;
    const el = following.el;
    if (event.type === "token") {
      const textEl = el.querySelector(".text");
      setAnswer(textEl, answerText(textEl) + event.text);
    } else if (event.type === "citations") {
      renderCitations(el, event.citations);
    } else if (event.type === "error") {
      note(el, "error", event.message);
    } else if (event.type === "done") {
      setAnswer(el.querySelector(".text"), event.content, { now: true });
      el.classList.remove("streaming");
      el.removeAttribute("aria-busy");
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
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (error) {
        console.error("bad chat event", error);
        return;
      }
      // Reset only once the connection serves an answer's events: a server that refuses and closes each socket
      // at once (its event reader failing) is then retried ever more slowly, not twice a second by every page.
      if (event.type !== "error") retryDelay = 500;
      try {
        handle(event);
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
    unanswered = { text, el: bubble("user", text) };
    input.value = "";
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(ask));
    else pendingAsk = ask;
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
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
