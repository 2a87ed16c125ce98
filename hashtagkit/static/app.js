// The upload page of `hashtagkit serve`: pick, drop or paste photos, one request per photo (a few at
// a time, so the server's micro-batcher can gather them and each card fills as soon as it is ready),
// hashtags shown as chips, copied as "#a #b". Server text only ever reaches the page through
// textContent or element properties, never innerHTML: a file name or hashtag is untrusted.
"use strict";

(() => {
  const TOKEN_KEY = "hashtagkit.token";
  const PARALLEL = 3; // requests in flight: enough for batching, few enough to keep the page fair
  const $ = (id) => document.getElementById(id);
  const fileInput = $("files"), drop = $("drop"), topInput = $("top"), tokenInput = $("token");
  const tokenBox = $("token-box"), results = $("results"), status = $("status"), runInfo = $("run-info");
  const clearButton = $("clear"), template = $("card");

  const items = []; // {file, url, card, tags, generation, top}
  const queue = [];
  let running = 0;

  // ---- the token: optional, kept in sessionStorage (gone when the tab closes) ----
  try { tokenInput.value = sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { /* storage disabled */ }
  if (tokenInput.value) tokenBox.open = true;

  function headers() {
    const token = tokenInput.value.trim();
    return token ? { Authorization: "Bearer " + token } : {};
  }

  const NEEDS_TOKEN = "This server needs a token: enter it under “Access token” above.";

  function askForToken() {
    tokenBox.open = true;
    status.textContent = NEEDS_TOKEN;
    status.dataset.kind = "error";
  }

  // ---- what the server says about its run ----
  async function loadInfo() {
    let res;
    try {
      res = await fetch("v1/info", { headers: headers() });
    } catch (e) {
      runInfo.textContent = "The server cannot be reached.";
      return;
    }
    if (res.status === 401) {
      runInfo.textContent = "This server needs a token.";
      askForToken();
      return;
    }
    if (!res.ok) {
      runInfo.textContent = "No information about the model (HTTP " + res.status + ").";
      return;
    }
    if (status.textContent === NEEDS_TOKEN) { status.textContent = ""; delete status.dataset.kind; }
    showInfo(await res.json());
  }

  function showInfo(info) {
    const parts = [];
    const head = info.head && typeof info.head === "object" ? info.head.name : info.head;
    if (head) parts.push("Model: " + head + (info.view ? " on " + info.view + " features" : ""));
    const size = info.vocabulary_size ?? info.vocab_size ?? (Array.isArray(info.vocab) ? info.vocab.length : null);
    if (size != null) parts.push(size + " hashtags");
    const backbones = Array.isArray(info.backbones) ? info.backbones : [];
    const names = backbones.map((b) => (typeof b === "string" ? b : b.backbone || b.name)).filter(Boolean);
    if (names.length) parts.push("backbones: " + names.join(", "));
    runInfo.textContent = parts.length ? parts.join(" · ") : "Connected.";
    const random = backbones.some((b) => b && typeof b === "object" &&
      (b.source === "random" || (b.weights && b.weights.source === "random")));
    if (random) {
      const warn = document.createElement("strong");
      warn.className = "warn";
      warn.textContent = " · random weights: a smoke test, not a trained model";
      runInfo.append(warn);
    }
  }

  // ---- adding photos ----
  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    for (const file of files) {
      const card = template.content.firstElementChild.cloneNode(true);
      const item = { file, url: URL.createObjectURL(file), card, tags: [], generation: 0 };
      const img = card.querySelector(".thumb");
      img.alt = file.name;
      img.addEventListener("error", () => {
        img.hidden = true;
        card.querySelector(".no-preview").hidden = false;
      });
      img.src = item.url;
      card.querySelector(".name").textContent = file.name;
      card.querySelector(".copy").addEventListener("click", () => copy(item));
      results.append(card);
      items.push(item);
      enqueue(item);
    }
    clearButton.disabled = false;
    status.textContent = files.length === 1 ? "1 photo added." : files.length + " photos added.";
    delete status.dataset.kind;
  }

  function enqueue(item) {
    item.generation += 1;
    item.top = topK(); // the K this card is asked with: a new K re-asks only the cards it changes
    setPending(item);
    queue.push([item, item.generation]);
    pump();
  }

  function pump() {
    while (running < PARALLEL && queue.length) {
      const [item, generation] = queue.shift();
      if (generation !== item.generation || !items.includes(item)) continue; // superseded or cleared
      running += 1;
      recommend(item, generation).finally(() => { running -= 1; pump(); });
    }
  }

  function topK() {
    const k = Math.round(Number(topInput.value));
    return Number.isFinite(k) && k >= 1 ? Math.min(k, Number(topInput.max) || 100) : 5;
  }

  async function recommend(item, generation) {
    const body = new FormData();
    body.append("files", item.file, item.file.name);
    let res, data = null;
    try {
      res = await fetch("v1/recommend?top=" + item.top, { method: "POST", headers: headers(), body });
      data = await res.json().catch(() => null);
    } catch (e) {
      if (generation === item.generation) showError(item, "The server cannot be reached.");
      return;
    }
    if (generation !== item.generation) return; // a newer request (another K) owns this card
    if (res.status === 401) {
      showError(item, NEEDS_TOKEN);
      item.card.dataset.reason = "token";
      askForToken();
      return;
    }
    // one photo per request, so its answer is results[0] (its hashtags, or its error)
    const result = data && Array.isArray(data.results) ? data.results[0] : null;
    if (!res.ok && !(result && result.error)) {
      showError(item, data && typeof data.detail === "string" ? data.detail : "HTTP " + res.status);
      return;
    }
    if (!result) showError(item, "The server sent no result for this photo.");
    else if (result.error) showError(item, result.error);
    else showTags(item, Array.isArray(result.hashtags) ? result.hashtags : []);
  }

  // ---- one card's states ----
  function setPending(item) {
    const c = item.card;
    c.dataset.state = "pending";
    delete c.dataset.reason;
    c.querySelector(".pending").hidden = false;
    c.querySelector(".error").hidden = true;
    c.querySelector(".actions").hidden = true;
    c.querySelector(".fallback").hidden = true;
    c.setAttribute("aria-busy", "true");
  }

  function settle(item, state) {
    const c = item.card;
    c.dataset.state = state;
    c.querySelector(".pending").hidden = true;
    c.removeAttribute("aria-busy");
  }

  function showError(item, message) {
    settle(item, "error");
    item.tags = [];
    item.card.querySelector(".chips").replaceChildren();
    const p = item.card.querySelector(".error");
    p.textContent = message;
    p.hidden = false;
  }

  function showTags(item, hashtags) {
    settle(item, "done");
    item.tags = hashtags.map((h) => String(h.tag));
    const chips = hashtags.map((h) => {
      const li = document.createElement("li");
      li.className = "chip";
      const score = Number(h.score);
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = String(h.tag);
      const value = document.createElement("span");
      value.className = "score";
      value.textContent = Number.isFinite(score) ? score.toFixed(2) : "?";
      li.dataset.score = String(h.score);
      li.title = "#" + h.tag + ": score " + (Number.isFinite(score) ? score.toPrecision(4) : "?");
      li.style.setProperty("--score", String(Number.isFinite(score) ? Math.max(0, Math.min(1, score)) : 0));
      li.append(tag, value);
      return li;
    });
    item.card.querySelector(".chips").replaceChildren(...chips);
    const actions = item.card.querySelector(".actions");
    actions.hidden = chips.length === 0;
    actions.querySelector(".copied").textContent = "";
  }

  // ---- copy: the Clipboard API where the page may use it, else a selected text box ----
  async function copy(item) {
    const text = item.tags.map((t) => "#" + t).join(" ");
    const note = item.card.querySelector(".copied");
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        note.textContent = "Copied";
        return;
      } catch (e) { /* permission refused: fall through */ }
    }
    const box = item.card.querySelector(".fallback");
    const area = box.querySelector("textarea");
    area.value = text;
    box.hidden = false;
    area.focus();
    area.select();
    let done = false;
    try { done = document.execCommand("copy"); } catch (e) { done = false; }
    note.textContent = done ? "Copied" : "Select the text below and copy it";
  }

  // ---- wiring ----
  $("choose").addEventListener("click", () => fileInput.click());
  fileInput.addEventListener("change", () => { addFiles(fileInput.files); fileInput.value = ""; });
  drop.addEventListener("click", (e) => { if (e.target === drop) fileInput.click(); });

  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", (e) => { if (!drop.contains(e.relatedTarget)) drop.classList.remove("over"); });
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles(e.dataTransfer && e.dataTransfer.files);
  });
  // a photo dropped beside the zone must not make the browser navigate away from the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  document.addEventListener("paste", (e) => {
    const files = e.clipboardData ? Array.from(e.clipboardData.files) : [];
    if (files.length) { e.preventDefault(); addFiles(files); }
  });

  let rerun = 0;
  topInput.addEventListener("input", () => {
    clearTimeout(rerun);
    // the same photos again with the new K, once the user stops typing
    rerun = setTimeout(() => items.filter((i) => i.top !== topK()).forEach(enqueue), 350);
  });

  // Enter or "Use" applies the token; leaving the field does too
  function applyToken() {
    const token = tokenInput.value.trim();
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* storage disabled: the token still works for this page */ }
    loadInfo();
    items.filter((i) => i.card.dataset.reason === "token").forEach(enqueue);
  }
  $("token-form").addEventListener("submit", (e) => { e.preventDefault(); applyToken(); });
  tokenInput.addEventListener("change", applyToken);

  clearButton.addEventListener("click", () => {
    for (const item of items) URL.revokeObjectURL(item.url);
    items.length = 0;
    queue.length = 0;
    results.replaceChildren();
    clearButton.disabled = true;
    status.textContent = "Cleared.";
    delete status.dataset.kind;
  });

  loadInfo();
})();
