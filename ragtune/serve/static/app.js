// ragtune web UI: plain JavaScript over the server's own API (no build step, no dependencies).
// Untrusted text (answers, documents, file names) is only ever inserted as text nodes, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { messages: [], models: [], busy: false };
const CITATION = /\[(\s*\d+(?:\s*[,;]\s*\d+)*\s*)\]/g;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function notify(message) {
  const notice = $("notice");
  notice.textContent = message || "";
  notice.hidden = !message;
}

function authHeaders(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    if (response.status === 401) message = `This server needs an API key: enter it at the top right (${message}).`;
    throw new Error(message);
  }
  return response;
}

const currentModel = () => state.models.find((m) => m.id === $("model").value);
const currentKb = () => (currentModel() ? currentModel().ragtune.kb : "");
const basename = (path) => String(path || "").split("/").pop();

// -- tabs ------------------------------------------------------------------------------------
function showTab(name) {
  for (const button of document.querySelectorAll("#tabs button")) button.classList.toggle("active", button.dataset.tab === name);
  for (const section of document.querySelectorAll(".tab")) section.classList.toggle("active", section.id === name);
  if (name === "documents") loadDocuments().catch((e) => notify(e.message));
  if (name === "runs") loadRuns().catch((e) => notify(e.message));
}

async function loadModels() {
  const data = await (await api("/v1/models")).json();
  state.models = data.data;
  const select = $("model");
  select.replaceChildren(...state.models.map((m) => el("option", { value: m.id }, m.id)));
  notify("");
}

// -- passages --------------------------------------------------------------------------------
async function openPassage(ref) {
  const kb = encodeURIComponent(ref.kb || currentKb());
  const passage = await (await api(`/v1/chunks/${ref.chunk_id}?kb=${kb}`)).json();
  $("passage-title").textContent = passage.title || basename(passage.source);
  $("passage-where").textContent = `${passage.source}${passage.page ? `, page ${passage.page}` : ""}, characters ${passage.start}–${passage.end}`;
  let [start, end] = passage.highlight;
  const text = passage.text;
  const quoted = ref.quote ? text.indexOf(ref.quote.trim()) : -1;
  if (quoted >= 0) [start, end] = [quoted, quoted + ref.quote.trim().length];  // a RAFT quote: just the quoted words
  $("passage-text").replaceChildren(text.slice(0, start), el("mark", {}, text.slice(start, end)), text.slice(end));
  $("passage").hidden = false;
  const mark = $("passage-text").querySelector("mark");
  if (mark && mark.scrollIntoView) mark.scrollIntoView({ block: "center" });
}

function citeButton(n, ref) {
  return el("button", { class: "cite", type: "button", title: ref ? ref.source : "no such source",
    "data-n": String(n), onclick: () => openPassage(ref).catch((e) => notify(e.message)) }, `[${n}]`);
}

// -- chat ------------------------------------------------------------------------------------
function addMessage(role, text) {
  const bubble = el("div", { class: `message ${role}` }, el("div", { class: "text" }, text));
  $("messages").append(bubble);
  return bubble;
}

function renderAnswer(node, text, references) {
  const byN = new Map(references.map((r) => [r.n, r]));
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(CITATION)) {
    parts.push(text.slice(last, match.index));
    const numbers = match[1].split(/[,;]/).map((s) => parseInt(s, 10));
    for (const n of numbers) parts.push(byN.has(n) ? citeButton(n, byN.get(n)) : `[${n}]`);
    last = match.index + match[0].length;
  }
  parts.push(text.slice(last));
  node.replaceChildren(...parts);
}

function renderSources(bubble, references, summary) {
  if (references.length) {
    const items = references.map((r) => el("li", {}, citeButton(r.n, r), " ", r.title || basename(r.source),
      r.inferred ? el("span", { class: "inferred" }, " (matched by ragtune; the model wrote no marker)") : null,
      r.quote ? el("span", { class: "inferred" }, ` “${r.quote}”`) : null));
    bubble.append(el("ol", { class: "sources" }, ...items));
  }
  if (summary) {
    const notes = [summary.grounded ? "grounded" : "not fully grounded", `retrieved for: ${summary.query}`];
    if (summary.timings && summary.timings.total_s !== undefined) notes.push(`${summary.timings.total_s} s`);
    bubble.append(el("div", { class: "status" }, notes.join(" · ")));
    for (const item of summary.unsupported || []) {  // what no given source says, and why
      bubble.append(el("div", { class: "status unsupported" }, `unsupported: ${item.text} (${item.reason})`));
    }
    if (summary.best_passage) {
      bubble.append(el("div", { class: "status" }, `closest passage: ${summary.best_passage.text}`));
    }
  }
}

async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ") && line !== "data: [DONE]") yield JSON.parse(line.slice(6));
      }
    }
  }
}

async function ask(question) {
  const model = $("model").value;
  const history = state.messages.slice();
  addMessage("user", question);
  const bubble = addMessage("assistant", "");
  const textNode = bubble.querySelector(".text");
  let text = "", reasoning = "", references = [], summary = null;
  const body = { model, messages: [...history, { role: "user", content: question }], stream: true };
  const response = await api("/v1/chat/completions", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) });
  for await (const chunk of serverEvents(response)) {
    if (chunk.error) throw new Error(chunk.error.message);
    const choice = chunk.choices && chunk.choices[0];
    if (!choice) continue;
    if (choice.delta.reasoning_content) {  // a RAFT model's chain of thought, shown folded above the answer
      reasoning += choice.delta.reasoning_content;
      let details = bubble.querySelector("details.reasoning");
      if (!details) {
        details = el("details", { class: "reasoning" }, el("summary", {}, "reasoning"), el("div", {}));
        bubble.prepend(details);
      }
      details.lastChild.textContent = reasoning;
    }
    if (choice.delta.content) { text += choice.delta.content; textNode.textContent = text; }
    if (choice.delta.references) references = choice.delta.references;
    if (chunk.ragtune) summary = chunk.ragtune;
  }
  const kb = currentKb();
  for (const r of references) r.kb = kb;
  const folded = bubble.querySelector("details.reasoning");
  if (folded && summary && summary.has_answer_tag === false) folded.remove();  // no tag: the reply is the answer
  renderAnswer(textNode, text, references);
  renderSources(bubble, references, summary);
  bubble.dataset.done = "true";
  state.messages.push({ role: "user", content: question }, { role: "assistant", content: text });
}

// -- search ----------------------------------------------------------------------------------
const rank = (ranks, name) => (ranks && ranks[name] ? `${ranks[name].rank} (${Number(ranks[name].score).toFixed(3)})` : "–");

async function search() {
  const query = $("search-query").value.trim();
  if (!query) return;
  const filters = $("search-filters").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const explain = $("search-explain").checked;
  const body = { query, k: Number($("search-k").value) || 10, mode: $("search-mode").value, explain,
    filters: filters.length ? filters : null, kb: currentKb() || null };
  const data = await (await api("/v1/search", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) })).json();
  const head = ["#", "source", "score", ...(explain ? ["dense rank (cosine)", "lexical rank (BM25)"] : []), "text"];
  const rows = data.data.map((hit, i) => el("tr", { class: "clickable", onclick: () => openPassage({ ...hit, kb: data.kb }).catch((e) => notify(e.message)) },
    el("td", { class: "num" }, String(i + 1)), el("td", {}, basename(hit.source)),
    el("td", { class: "num" }, Number(hit.score).toFixed(4)),
    ...(explain ? [el("td", { class: "num" }, rank(hit.ranks, "dense")), el("td", { class: "num" }, rank(hit.ranks, "lexical"))] : []),
    el("td", {}, hit.text.length > 240 ? hit.text.slice(0, 240) + "…" : hit.text)));
  $("search-results").replaceChildren(el("tr", {}, ...head.map((h) => el("th", {}, h))), ...rows);
  if (!rows.length) $("search-results").append(el("tr", {}, el("td", { colspan: String(head.length) }, "No hits.")));
}

// -- documents -------------------------------------------------------------------------------
async function loadDocuments() {
  const kb = encodeURIComponent(currentKb());
  const data = await (await api(`/v1/documents?kb=${kb}&limit=500`)).json();
  const head = ["source", "title", "chunks", "ingested", ""];
  const rows = data.data.map((doc) => el("tr", {}, el("td", {}, doc.uploaded ? basename(doc.source) : doc.source),
    el("td", {}, doc.title || ""), el("td", { class: "num" }, String(doc.chunks)), el("td", {}, doc.ingested_at),
    el("td", {}, el("button", { type: "button", class: "delete", "data-source": doc.source,
      onclick: () => deleteDocument(doc).catch((e) => notify(e.message)) }, "Delete"))));
  $("document-list").replaceChildren(el("caption", {}, `${data.total} documents in ${data.kb}`),
    el("tr", {}, ...head.map((h) => el("th", {}, h))), ...rows);
}

async function deleteDocument(doc) {
  if (!window.confirm(`Delete ${doc.source} from the knowledge base?`)) return;
  await api(`/v1/documents/${encodeURIComponent(doc.id)}?kb=${encodeURIComponent(currentKb())}`, { method: "DELETE" });
  await loadDocuments();
}

async function upload() {
  const file = $("upload-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  $("upload-status").textContent = `uploading ${file.name}…`;
  const data = await (await api(`/v1/documents?kb=${encodeURIComponent(currentKb())}`, { method: "POST", body: form })).json();
  $("upload-status").textContent = `${data.file}: ${data.documents.length} document(s), ${data.report.chunks_added} new chunk(s)`;
  $("upload-file").value = "";
  await loadDocuments();
}

// -- runs ------------------------------------------------------------------------------------
async function loadRuns() {
  const data = await (await api("/v1/runs")).json();
  const head = ["", "run", "strategy", "model", "dataset", "answers", "status", "started"];
  const rows = data.data.map((run) => el("tr", {}, el("td", {}, el("input", { type: "checkbox", value: run.id, onchange: updateCompare })),
    el("td", {}, run.id), el("td", {}, run.strategy), el("td", {}, run.model || ""), el("td", {}, basename(run.dataset)),
    el("td", { class: "num" }, String(run.predictions)), el("td", {}, run.status), el("td", {}, run.started)));
  $("run-list").replaceChildren(el("caption", {}, `${data.data.length} runs in ${data.runs_db}`),
    el("tr", {}, ...head.map((h) => el("th", {}, h))), ...rows);
  updateCompare();
}

function selectedRuns() {
  return [...document.querySelectorAll("#run-list input:checked")].map((box) => box.value);
}

function updateCompare() {
  $("compare").disabled = selectedRuns().length < 2;
}

async function compare() {
  $("runs-status").textContent = "comparing…";
  const response = await api("/v1/runs/report", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ runs: selectedRuns() }) });
  const frame = $("report");
  frame.srcdoc = await response.text();  // sandboxed: the report is shown, nothing in it runs
  frame.hidden = false;
  $("runs-status").textContent = "";
}

// -- wiring ----------------------------------------------------------------------------------
function guard(fn) {
  return (event) => {
    if (event) event.preventDefault();
    notify("");
    fn().catch((e) => notify(e.message));
  };
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = localStorage.getItem("ragtune-api-key") || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("ragtune-api-key", $("api-key").value.trim());
    loadModels().catch((e) => notify(e.message));
  });
  for (const button of document.querySelectorAll("#tabs button")) button.addEventListener("click", () => showTab(button.dataset.tab));
  $("ask-form").addEventListener("submit", guard(async () => {
    const question = $("question").value.trim();
    if (!question || state.busy) return;
    state.busy = true;
    $("ask").disabled = true;
    $("question").value = "";
    try { await ask(question); } finally { state.busy = false; $("ask").disabled = false; }
  }));
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("ask-form").requestSubmit(); }
  });
  $("new-chat").addEventListener("click", () => { state.messages = []; $("messages").replaceChildren(); });
  $("search-form").addEventListener("submit", guard(search));
  $("upload-form").addEventListener("submit", guard(upload));
  $("compare").addEventListener("click", guard(compare));
  $("passage-close").addEventListener("click", () => { $("passage").hidden = true; });
  loadModels().catch((e) => notify(e.message));
});
