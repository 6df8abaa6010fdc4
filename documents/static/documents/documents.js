// The documents page: drag-and-drop uploads through the API, live status over the `ws/documents/` socket.
(function () {
  "use strict";

  const form = document.getElementById("upload-form");
  const input = document.getElementById("upload-input");
  const body = document.getElementById("documents-body");
  const live = document.getElementById("live-status");
  if (!form || !body) return;

  const apiUrl = form.dataset.api;
  const maxBytes = parseInt(form.dataset.maxBytes, 10);
  const csrfToken = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const rows = new Map(); // document id -> <tr>

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function dropEmptyRow() {
    const empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
  }

  function fillRow(row, doc) {
    row.replaceChildren();
    const title = el("td", {}, doc.title);
    title.append(el("div", { class: "muted small" }, doc.filename));
    const status = el("td");
    status.append(el("span", { class: "status status-" + doc.status }, doc.status));
    if (doc.error) status.append(el("div", { class: "error small", role: "alert" }, doc.error));
    const progressCell = el("td");
    const bar = el("progress", { max: "100", value: String(doc.progress) }, doc.progress + "%");
    bar.setAttribute("aria-label", "Progress of " + doc.title);
    progressCell.append(bar);
    const actions = el("td");
    if (doc.id) {
      const link = el("a", { class: "delete", href: "/documents/" + doc.id + "/delete/" }, "Delete");
      link.addEventListener("click", (event) => { event.preventDefault(); removeDocument(doc); });
      actions.append(link);
    }
    row.append(title, status, progressCell, el("td", {}, doc.pages ?? "–"), el("td", {}, doc.chunks ?? 0), actions);
  }

  function upsert(doc) {
    let row = rows.get(doc.id);
    if (!row) {
      dropEmptyRow();
      row = el("tr", { "data-id": String(doc.id) });
      body.prepend(row);
      rows.set(doc.id, row);
    }
    fillRow(row, doc);
    return row;
  }

  function removeRow(id) {
    const row = rows.get(id);
    if (row) row.remove();
    rows.delete(id);
  }

  async function removeDocument(doc) {
    if (!window.confirm("Delete “" + doc.title + "”? The file, its chunks and vectors are removed for good.")) return;
    const response = await fetch(apiUrl + doc.id + "/", {
      method: "DELETE", headers: { "X-CSRFToken": csrfToken }, credentials: "same-origin",
    });
    if (response.status === 204 || response.status === 404) {
      removeRow(doc.id);
      live.textContent = "“" + doc.title + "” was deleted.";
    } else {
      live.textContent = "Could not delete “" + doc.title + "” (" + response.status + ").";
    }
  }

  function errorMessage(xhr) {
    try {
      return JSON.parse(xhr.responseText).error.message;
    } catch (_) {
      return "Upload failed (" + (xhr.status || "network error") + ").";
    }
  }

  function upload(file) {
    dropEmptyRow();
    const row = el("tr", { class: "uploading" });
    body.prepend(row);
    const pending = { id: null, title: file.name, filename: file.name, status: "uploading", progress: 0 };
    fillRow(row, pending);
    if (file.size > maxBytes) {
      fillRow(row, { ...pending, status: "rejected", error: "This file is over the upload limit." });
      return;
    }
    const data = new FormData();
    data.append("file", file);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl);
    xhr.setRequestHeader("X-CSRFToken", csrfToken);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) {
        fillRow(row, { ...pending, progress: Math.round((100 * event.loaded) / event.total) });
      }
    });
    xhr.addEventListener("load", () => {
      if (xhr.status === 200 || xhr.status === 201) {
        const doc = JSON.parse(xhr.responseText);
        row.remove();
        upsert(doc);
        live.textContent = xhr.status === 201 ? file.name + " uploaded." : file.name + " was already uploaded.";
      } else {
        fillRow(row, { ...pending, status: "rejected", error: errorMessage(xhr) });
      }
    });
    xhr.addEventListener("error", () => fillRow(row, { ...pending, status: "rejected", error: errorMessage(xhr) }));
    xhr.send(data);
  }

  function uploadAll(files) {
    for (const file of files) upload(file);
  }

  input.addEventListener("change", () => { uploadAll(input.files); input.value = ""; });
  for (const name of ["dragenter", "dragover"]) {
    form.addEventListener(name, (event) => { event.preventDefault(); form.classList.add("dragover"); });
  }
  for (const name of ["dragleave", "drop"]) {
    form.addEventListener(name, (event) => { event.preventDefault(); form.classList.remove("dragover"); });
  }
  form.addEventListener("drop", (event) => uploadAll(event.dataTransfer.files));

  // Rows rendered by the server get the same behaviour as live ones.
  const initial = JSON.parse(document.getElementById("documents-data").textContent);
  for (const row of Array.from(body.querySelectorAll("tr[data-id]"))) row.remove();
  for (const doc of initial.reverse()) upsert(doc);

  async function refresh() {
    const response = await fetch(apiUrl + "?page_size=100", { credentials: "same-origin" });
    if (!response.ok) return;
    const page = await response.json();
    for (const doc of page.results.slice().reverse()) upsert(doc);
  }

  let retryDelay = 1000;
  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + window.location.host + "/ws/documents/");
    socket.addEventListener("open", () => { retryDelay = 1000; refresh(); }); // catch up on what was missed
    socket.addEventListener("message", (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "document") upsert(message.document);
      else if (message.type === "document_deleted") removeRow(message.id);
    });
    socket.addEventListener("close", () => {
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 30000);
    });
  }
  connect();
})();
