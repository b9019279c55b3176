// ImageFinder page: vanilla JS, no build step. Talks to the API at data-api-base (the page's own
// /api/ forwarder by default). Every message shown to the person comes from the API's
// {"detail": ...} or from the short explanations below.
(() => {
  "use strict";

  const API = (document.body.dataset.apiBase || "api").replace(/\/+$/, "");
  const $ = (selector) => document.querySelector(selector);
  const el = {
    drop: $("#drop"), file: $("#file"), dropEmpty: $(".drop-empty"), dropQuery: $(".drop-query"),
    queryImg: $("#query-img"), queryLabel: $("#query-label"), urlForm: $("#url-form"), url: $("#url"),
    k: $("#k"), grid: $("#grid"), title: $("#results-title"), mini: $("#results-query"), meta: $("#results-meta"), hint: $("#hint"),
    error: $("#error"), errorTitle: $("#error-title"), errorText: $("#error-text"), errorClose: $("#error-close"),
    status: $("#status"), statusText: $("#status-text"), progress: $("#progress"), template: $("#card-template"),
  };
  const state = { query: null, lastUpload: null, seq: 0, stats: null, objectUrl: null, retry: null };

  class UserError extends Error {
    constructor(title, detail) { super(detail); this.title = title; }
  }

  // Labels for the engine's metrics; a metric the API lists that is not here still gets a button.
  const METRICS = {
    cosine: ["Cosine", "cosine similarity", "Cosine similarity of the image features (recommended)"],
    euclidean: ["Euclidean", "Euclidean distance", "Euclidean distance between the raw features (lower is closer)"],
    vote: ["Vote", "vote", "A vote between rankings (reciprocal-rank fusion)"],
    fusion: ["Fusion", "fusion", "Rank fusion of an ensemble model's members"],
  };
  const metricInfo = (name) => METRICS[name] || [name.charAt(0).toUpperCase() + name.slice(1), name, name];

  const apiUrl = (path) => `${API}/${path.replace(/^\/+/, "")}`;
  const thumbUrl = (id) => apiUrl(`images/${id}/thumbnail`);
  const originalUrl = (id) => apiUrl(`images/${id}`);
  const metric = () => document.querySelector('input[name="metric"]:checked').value;

  function titleFor(status) {
    if (status === 413) return "That image is too large";
    if (status === 415) return "That file is not an image ImageFinder can read";
    if (status === 404) return "Not found";
    if (status === 502 || status === 503 || status === 504) return "The search service is not available";
    if (status === 422 || status === 400) return "That did not work";
    return "Something went wrong";
  }

  async function request(path, options = {}) {
    let response;
    try {
      response = await fetch(apiUrl(path), options);
    } catch (err) {
      throw new UserError("Cannot reach ImageFinder",
        "The page could not contact its server. Check that ImageFinder is still running, then try again.");
    }
    let body = null;
    if ((response.headers.get("content-type") || "").includes("application/json")) {
      try { body = await response.json(); } catch (err) { body = null; }
    }
    if (!response.ok) {
      const detail = body && typeof body.detail === "string" ? body.detail : `The server answered HTTP ${response.status}.`;
      throw new UserError(titleFor(response.status), detail);
    }
    return body;
  }

  // ---- messages ------------------------------------------------------------------------------

  function showError(err) {
    el.errorTitle.textContent = err.title || "Something went wrong";
    el.errorText.textContent = err.message ? ` ${err.message}` : "";
    el.error.hidden = false;
  }
  function hideError() { el.error.hidden = true; }
  el.errorClose.addEventListener("click", hideError);

  function setBusy(busy) {
    el.progress.hidden = !busy;
    document.body.setAttribute("aria-busy", busy ? "true" : "false");
  }

  // ---- API status ----------------------------------------------------------------------------

  async function loadStatus() {
    clearTimeout(state.retry);
    try {
      const stats = await request("stats");
      state.stats = stats;
      el.status.dataset.state = "ok";
      el.statusText.textContent = `${stats.images.toLocaleString()} images`;
      const model = document.createElement("span");
      model.className = "model";
      model.textContent = ` · ${stats.model}`;
      el.statusText.append(model);
      el.status.title = `index ${stats.index_type}, ${stats.dims}-d features, ${stats.clusters ?? 0} clusters`;
      renderMetrics(stats.metrics);
      if (!state.query) renderStart();
      if (el.errorTitle.textContent === titleFor(502) || el.errorTitle.textContent === "Cannot reach ImageFinder") hideError();
    } catch (err) {
      el.status.dataset.state = "down";
      el.statusText.textContent = "API unavailable";
      el.status.title = err.message;
      if (!state.query) {
        showError(err);
        el.grid.replaceChildren(emptyNote("Results will appear here once the search service is running."));
      }
      state.retry = setTimeout(loadStatus, 5000);
    }
  }

  function renderMetrics(names) {
    const group = document.querySelector(".segmented");
    const shown = Array.from(group.querySelectorAll("input")).map((input) => input.value);
    if (!Array.isArray(names) || !names.length || names.join() === shown.join()) return;
    const current = names.includes(metric()) ? metric() : names[0];
    group.replaceChildren(...names.map((name) => {
      const [label, , help] = metricInfo(name);
      const wrap = document.createElement("label");
      wrap.title = help;
      const input = document.createElement("input");
      Object.assign(input, { type: "radio", name: "metric", value: name, checked: name === current });
      input.addEventListener("change", rerun);
      const span = document.createElement("span");
      span.textContent = label;
      wrap.append(input, span);
      return wrap;
    }));
  }

  // ---- queries -------------------------------------------------------------------------------

  function showQuery(src, label) {
    el.dropEmpty.hidden = true;
    el.dropQuery.hidden = false;
    el.queryImg.src = src;
    el.queryLabel.textContent = label;
    el.mini.src = src;
    el.mini.alt = `Query: ${label}`;
    el.mini.hidden = false;
  }

  function useFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      showError(new UserError("That file is not an image",
        `"${file.name}" is ${file.type}. Choose a JPEG, PNG, GIF, WebP, BMP or TIFF image.`));
      return;
    }
    const limit = state.stats && state.stats.max_upload_bytes;
    if (limit && file.size > limit) {
      showError(new UserError("That image is too large",
        `"${file.name}" is ${(file.size / 1048576).toFixed(1)} MB; the limit is ${(limit / 1048576).toFixed(0)} MB.`));
      return;
    }
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = URL.createObjectURL(file);
    const label = file.name && file.name !== "image.png" ? file.name : "Pasted image";
    state.lastUpload = { type: "upload", file, label, preview: state.objectUrl };
    navigate(state.lastUpload);
  }

  function useUrl(text) {
    const url = (text || "").trim();
    if (!url) return;
    if (!/^https?:\/\//i.test(url)) {
      showError(new UserError("That is not an image URL", "Paste a link that starts with http:// or https://."));
      return;
    }
    navigate({ type: "url", url, label: url, preview: url });
  }

  function useId(id, label) {
    navigate({ type: "id", id, label: label || `Image #${id}`, preview: thumbUrl(id) });
  }

  // Image-id searches live in the address (#more=ID), so Back/Forward and links work.
  function navigate(query) {
    if (query.type === "id") {
      state.pendingLabel = query.label;
      const hash = `#more=${query.id}`;
      if (location.hash === hash) search(query); else location.hash = hash;
      return;
    }
    if (location.hash) history.pushState(null, "", location.pathname + location.search);
    search(query);
  }

  function fromHash() {
    const match = /^#more=(\d+)$/.exec(location.hash);
    if (match) {
      const id = Number(match[1]);
      const label = state.pendingLabel || `Image #${id}`;
      state.pendingLabel = null;
      search({ type: "id", id, label, preview: thumbUrl(id) });
    } else if (!location.hash && state.lastUpload && state.query !== state.lastUpload) {
      search(state.lastUpload);
    } else if (!location.hash && state.query && state.query.type === "id") {
      state.query = null;
      resetQuery();
      renderStart();
    }
  }
  window.addEventListener("hashchange", fromHash);

  function resetQuery() {
    el.dropEmpty.hidden = false;
    el.dropQuery.hidden = true;
    el.mini.hidden = true;
  }

  async function search(query) {
    state.query = query;
    const seq = ++state.seq;
    const k = Number(el.k.value);
    const m = metric();
    hideError();
    showQuery(query.preview, query.label);
    setBusy(true);
    renderSkeleton(k);
    // An image-id search finds the image itself first: ask for one more and leave it out.
    const params = new URLSearchParams({ k: String(query.type === "id" ? k + 1 : k), metric: m });
    let options;
    if (query.type === "upload") {
      const form = new FormData();
      form.append("file", query.file, query.file.name || "pasted-image.png");
      options = { method: "POST", body: form };
    } else {
      const body = query.type === "url" ? { url: query.url } : { id: query.id };
      options = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    }
    try {
      const data = await request(`search?${params}`, options);
      if (seq !== state.seq) return; // a newer search replaced this one
      let results = data.results;
      if (query.type === "id") results = results.filter((r) => r.id !== query.id).slice(0, k);
      renderResults(results, data, m, query);
    } catch (err) {
      if (seq !== state.seq) return;
      showError(err);
      el.title.textContent = "No results";
      el.meta.textContent = "";
      el.grid.replaceChildren(emptyNote("Fix the problem above, or try another image."));
    } finally {
      if (seq === state.seq) setBusy(false);
    }
  }

  // ---- rendering -----------------------------------------------------------------------------

  function displayName(r) {
    const meta = r.meta || {};
    let name = meta.filename || meta.origin || r.source || `#${r.id}`;
    name = String(name).split(/[?#]/)[0].replace(/\/+$/, "");
    name = name.slice(name.lastIndexOf("/") + 1) || name;
    try { name = decodeURIComponent(name); } catch (err) { /* keep it as it is */ }
    return name;
  }

  function emptyNote(text) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = text;
    return p;
  }

  function renderSkeleton(k) {
    const cards = [];
    for (let i = 0; i < Math.min(k, 12); i++) {
      const card = document.createElement("div");
      card.className = "card skeleton";
      card.innerHTML = '<div class="thumb"></div><div class="line"></div><div class="line short"></div>';
      cards.push(card);
    }
    el.grid.replaceChildren(...cards);
  }

  function formatScore(score, m) {
    if (m === "euclidean") return score.toFixed(2);
    if (m === "cosine") return score.toFixed(3);
    return score.toFixed(4);
  }

  function barWidths(results, m) {
    const scores = results.map((r) => r.score);
    if (!scores.length) return [];
    if (m === "cosine") return scores.map((s) => Math.max(0, Math.min(1, s)));
    if (m === "euclidean") {
      const best = Math.min(...scores);
      return scores.map((s) => (s > 0 ? best / s : 1));
    }
    const top = Math.max(...scores);
    return scores.map((s) => (top > 0 ? s / top : 0));
  }

  function makeCard(r, { rank, score, width, m } = {}) {
    const card = el.template.content.firstElementChild.cloneNode(true);
    const name = displayName(r);
    card.dataset.id = String(r.id);
    const img = card.querySelector("img");
    img.src = thumbUrl(r.id);
    img.alt = name;
    img.addEventListener("error", () => {
      if (rank === undefined) card.remove(); // a start-page pick that no longer exists
      else img.style.visibility = "hidden";
    });
    const button = card.querySelector(".thumb");
    button.setAttribute("aria-label", `More like ${name}`);
    button.title = `More like ${name}`;
    card.dataset.name = name;
    button.addEventListener("click", () => {
      useId(r.id, card.dataset.name);
      // Clicked far down the page: bring the new results' heading into view.
      const head = el.title.parentElement;
      if (head.getBoundingClientRect().top < 0) head.scrollIntoView({ behavior: "smooth", block: "start" });
    });
    card.querySelector(".name").textContent = name;
    card.querySelector(".name").title = r.source || name;
    const rankEl = card.querySelector(".rank");
    const scoreEl = card.querySelector(".score");
    if (rank === undefined) {
      rankEl.remove();
      scoreEl.remove();
    } else {
      rankEl.textContent = `#${rank}`;
      card.querySelector(".bar i").style.width = `${Math.round(width * 100)}%`;
      scoreEl.title = `${metricInfo(m)[1]}: ${r.score}`;
      card.querySelector(".value").textContent = formatScore(score, m);
    }
    card.querySelector(".dims").textContent = r.width && r.height ? `${r.width}×${r.height}` : "";
    const open = card.querySelector(".open");
    open.href = originalUrl(r.id);
    open.title = "Open the original image";
    return card;
  }

  function renderResults(results, data, m, query) {
    const widths = barWidths(results, m);
    el.title.textContent = query.type === "id" ? `More like ${query.label}` : "Most similar images";
    const what = metricInfo(m)[1];
    el.meta.textContent = `${results.length} of ${data.indexed.toLocaleString()} images · ${what} · ${Math.round(data.took_ms)} ms`;
    if (!results.length) {
      el.grid.replaceChildren(emptyNote("The index has no images yet."));
      return;
    }
    el.grid.replaceChildren(...results.map((r, i) => makeCard(r, { rank: i + 1, score: r.score, width: widths[i], m })));
    el.hint.hidden = false;
  }

  // Before any search: a spread of images from the collection to start from.
  function renderStart() {
    if (!state.stats || state.query) return;
    const rows = state.stats.items;
    el.title.textContent = "Start from an image in the collection";
    el.meta.textContent = `${state.stats.images.toLocaleString()} images indexed`;
    if (!state.stats.images) {
      el.grid.replaceChildren(emptyNote("The index is empty: add images with POST /images or `imagefinder add`."));
      return;
    }
    const count = Math.min(12, rows);
    const step = Math.max(1, Math.floor(rows / count));
    const cards = [];
    for (let i = 0; i < count; i++) cards.push(makeCard({ id: i * step, source: `Image #${i * step}` }));
    el.grid.replaceChildren(...cards);
    // Names arrive lazily; the thumbnails are what matter here.
    cards.forEach((card) => {
      request(`images/${card.dataset.id}/info`).then((info) => {
        const name = displayName(info);
        card.querySelector(".name").textContent = name;
        card.querySelector(".dims").textContent = info.width && info.height ? `${info.width}×${info.height}` : "";
        card.dataset.name = name;
        card.querySelector(".thumb").title = `More like ${name}`;
        card.querySelector(".thumb").setAttribute("aria-label", `More like ${name}`);
      }).catch(() => card.remove());
    });
  }

  // ---- input: pick, drop, paste, URL -----------------------------------------------------------

  el.drop.addEventListener("click", () => el.file.click());
  el.drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); el.file.click(); }
  });
  el.file.addEventListener("change", () => {
    useFile(el.file.files[0]);
    el.file.value = "";
  });

  let dragDepth = 0;
  window.addEventListener("dragenter", (e) => { e.preventDefault(); dragDepth++; el.drop.classList.add("over"); });
  window.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; el.drop.classList.remove("over"); } });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    dragDepth = 0;
    el.drop.classList.remove("over");
    const dt = e.dataTransfer;
    if (dt.files && dt.files.length) { useFile(dt.files[0]); return; }
    const uri = (dt.getData("text/uri-list") || dt.getData("text/plain") || "").split("\n").find((l) => l && !l.startsWith("#"));
    if (uri) { el.url.value = uri.trim(); useUrl(uri); }
  });

  document.addEventListener("paste", (e) => {
    const items = Array.from((e.clipboardData && e.clipboardData.items) || []);
    const image = items.find((item) => item.kind === "file" && item.type.startsWith("image/"));
    if (image) {
      e.preventDefault();
      useFile(image.getAsFile());
      return;
    }
    if (document.activeElement === el.url) return; // pasting text into the URL box: let it be
    const text = e.clipboardData && e.clipboardData.getData("text/plain");
    if (text && /^https?:\/\/\S+$/i.test(text.trim())) {
      e.preventDefault();
      el.url.value = text.trim();
      useUrl(text);
    }
  });

  el.urlForm.addEventListener("submit", (e) => { e.preventDefault(); useUrl(el.url.value); });
  el.queryImg.addEventListener("error", () => { el.queryImg.removeAttribute("src"); });

  // ---- controls --------------------------------------------------------------------------------

  function rerun() { if (state.query) search(state.query); }
  el.k.addEventListener("change", rerun);
  document.querySelectorAll('input[name="metric"]').forEach((r) => r.addEventListener("change", rerun));

  loadStatus().then(fromHash);
})();
