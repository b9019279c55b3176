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
    collection: $("#collection"), filterBox: $("#filter-box"), filterForm: $("#filter-form"), prefix: $("#filter-prefix"), where: $("#filter-where"),
    filterClear: $("#filter-clear"), pager: $("#pager"), newer: $("#newer"), older: $("#older"), pageInfo: $("#page-info"),
    browseBack: $("#browse-back"), notice: $("#notice"),
    add: $("#add"), addOpen: $("#add-open"), addClose: $("#add-close"), addDrop: $("#add-drop"), addFiles: $("#add-files"),
    addFolder: $("#add-folder"), addUrlForm: $("#add-url-form"), addUrls: $("#add-urls"), addList: $("#add-list"),
    addSummary: $("#add-summary"), tokenKept: $("#token-kept"), tokenForget: $("#token-forget"),
    crop: $("#crop"), box: $("#box"), boxClear: $("#box-clear"), regionText: $("#region-text"), noMatch: $("#no-match"),
    whyDialog: $("#why-dialog"), whyText: $("#why-text"), whyCanvas: $("#why-canvas"), whyTitle: $("#why-title"),
    dups: $("#dups"), dupsOpen: $("#dups-open"), dupsClose: $("#dups-close"), dupsTier: $("#dups-tier"),
    dupsMeta: $("#dups-meta"), dupsList: $("#dups-list"),
    tokenDialog: $("#token-dialog"), tokenWhy: $("#token-why"), tokenInput: $("#token-input"), tokenCancel: $("#token-cancel"),
  };
  const state = {
    query: null, lastUpload: null, seq: 0, stats: null, objectUrl: null, retry: null,
    browse: { offset: 0, limit: 24, prefix: "", where: [] }, tokenAsk: null, adding: false, dupsSeq: 0,
  };
  const PAGE_TITLE = document.title;

  class UserError extends Error {
    constructor(title, detail, status) { super(detail); this.title = title; this.status = status; }
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
    if (status === 401) return "The API token was not accepted";
    if (status === 403) return "Not allowed";
    if (status === 502 || status === 503 || status === 504) return "The search service is not available";
    if (status === 422 || status === 400) return "That did not work";
    return "Something went wrong";
  }

  // fetch reports no upload progress: an upload that wants it goes by XMLHttpRequest, answered
  // as the few parts of a fetch Response that request() reads.
  function sendWithProgress(url, options) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open(options.method || "POST", url);
      new Headers(options.headers || {}).forEach((value, name) => xhr.setRequestHeader(name, value));
      xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) options.onProgress(e.loaded / e.total); });
      xhr.addEventListener("load", () => resolve({
        ok: xhr.status >= 200 && xhr.status < 300, status: xhr.status,
        headers: { get: (name) => xhr.getResponseHeader(name) },
        json: async () => JSON.parse(xhr.responseText),
      }));
      xhr.addEventListener("error", () => reject(new Error("network error")));
      xhr.send(options.body);
    });
  }

  async function request(path, options = {}) {
    let response;
    try {
      response = options.onProgress ? await sendWithProgress(apiUrl(path), options) : await fetch(apiUrl(path), options);
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
      throw new UserError(titleFor(response.status), detail, response.status);
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
      // The page offers adding and deleting only where the server accepts them (see /stats "writes").
      document.body.dataset.writes = stats.writes || "this-machine";
      if (stats.writes === "read-only") el.add.hidden = true;
      // "fusion" fuses an ensemble's members; with a single model it is only a copy of cosine.
      const ensemble = String(stats.model).includes("+");
      renderMetrics((stats.metrics || []).filter((name) => name !== "fusion" || ensemble));
      if (state.wasDown) { state.wasDown = false; controlsFromLink(); route(); }
      if (el.errorTitle.textContent === titleFor(502) || el.errorTitle.textContent === "Cannot reach ImageFinder") hideError();
    } catch (err) {
      el.status.dataset.state = "down";
      el.statusText.textContent = "API unavailable";
      el.status.title = err.message;
      state.wasDown = true;
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

  // The address says what is shown, so Back/Forward work and a search can be shared as a link:
  // #more=ID (also ?id=ID) for "more like this", ?url=URL for a search by image URL; an upload
  // cannot be put in a link (its state marks the history entry instead); nothing: the collection.
  const keyOf = (q) => (q ? (q.type === "id" ? `id:${q.id}` : q.type === "url" ? `url:${q.url}` : "upload") : "browse");

  function navigate(query) {
    if (query.type === "id") {
      state.pendingLabel = query.label;
      const hash = `#more=${query.id}`;
      if (location.hash === hash) search(query); else location.hash = hash;
      return;
    }
    if (query.type === "url") {
      const link = linkFor(query);
      if (location.pathname + location.search !== link || location.hash) history.pushState(null, "", link);
    } else {
      history.pushState({ upload: true }, "", location.pathname);
    }
    search(query);
  }

  // A URL search's link carries k and the measure too, when they are not the defaults.
  function linkFor(query) {
    const params = new URLSearchParams({ url: query.url });
    if (el.k.value !== "10") params.set("k", el.k.value);
    if (metric() !== "cosine") params.set("metric", metric());
    return `${location.pathname}?${params}`;
  }

  function controlsFromLink() {
    const params = new URLSearchParams(location.search);
    const k = params.get("k");
    if (k && Array.from(el.k.options).some((o) => o.value === k)) el.k.value = k;
    const m = params.get("metric");
    const input = m && Array.from(document.querySelectorAll('input[name="metric"]')).find((i) => i.value === m);
    if (input) input.checked = true;
  }

  function showCollection() {
    if (location.search || location.hash) history.pushState(null, "", location.pathname);
    route();
  }

  function wanted() {
    const more = /^#more=(\d+)$/.exec(location.hash);
    const params = new URLSearchParams(location.search);
    if (!more && /^\d+$/.test(params.get("id") || "")) {
      history.replaceState(null, "", `${location.pathname}#more=${params.get("id")}`);
      return wanted();
    }
    if (more) {
      const id = Number(more[1]);
      const label = state.pendingLabel || `Image #${id}`;
      state.pendingLabel = null;
      return { type: "id", id, label, preview: thumbUrl(id) };
    }
    const url = params.get("url");
    if (url && /^https?:\/\//i.test(url)) {
      el.url.value = url;
      return { type: "url", url, label: url, preview: url };
    }
    if (history.state && history.state.upload && state.lastUpload) return state.lastUpload;
    return null;
  }

  function route() {
    const query = wanted();
    if (query && keyOf(query) === keyOf(state.query)) return; // already shown (hashchange and popstate both fire)
    if (query) search(query); else browse(state.browse.offset);
  }
  window.addEventListener("hashchange", route);
  window.addEventListener("popstate", route);

  function resetQuery() {
    el.dropEmpty.hidden = false;
    el.dropQuery.hidden = true;
    el.mini.hidden = true;
  }

  async function search(query) {
    state.query = query;
    const seq = ++state.seq;
    el.collection.hidden = true;
    el.pager.hidden = true;
    el.noMatch.hidden = true;
    el.browseBack.hidden = false;
    document.title = `${query.label} · ${PAGE_TITLE}`;
    const k = Number(el.k.value);
    const m = metric();
    hideError();
    showQuery(query.preview, query.label);
    setBusy(true);
    renderSkeleton(k);
    // An image-id search finds the image itself first: ask for one more and leave it out.
    const params = new URLSearchParams({ k: String(query.type === "id" ? k + 1 : k), metric: m });
    showBox();
    try {
      const data = await request(`search?${params}`, await searchOptions(query));
      if (seq !== state.seq) return; // a newer search replaced this one
      let results = data.results;
      if (query.type === "id") results = results.filter((r) => r.id !== query.id).slice(0, k);
      // The image's own pixel size, which a box is given in (the API's decoded, upright size).
      if (data.query && data.query.width && data.query.height && !query.size) query.size = [data.query.width, data.query.height];
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

  // The request body of a search. A region (query.box) is sent as the API's `box`, in pixels of
  // the query image; the API takes a box with an upload or a URL, so for an indexed image the
  // page sends the original image's bytes as an upload.
  // `extra`: more fields for the request (result_id for "why this match").
  async function searchOptions(query, extra = {}) {
    const box = query.box ? query.box.join(",") : null;
    if (query.type === "upload" || (box && query.type === "id")) {
      const file = query.type === "upload" ? query.file : await originalOf(query);
      const form = new FormData();
      form.append("file", file, file.name || "pasted-image.png");
      if (box) form.append("box", box);
      Object.entries(extra).forEach(([name, value]) => form.append(name, String(value)));
      return { method: "POST", body: form };
    }
    const body = { ...(query.type === "url" ? { url: query.url } : { id: query.id }), ...extra };
    if (box) body.box = query.box;
    return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  }

  async function originalOf(query) {
    if (query.original) return query.original;
    let response;
    try { response = await fetch(originalUrl(query.id)); } catch (err) { response = null; }
    if (!response || !response.ok) {
      throw new UserError("Cannot search a region of this image",
        `The original of image #${query.id} is not available from the server, so only the whole image can be searched.`);
    }
    const blob = await response.blob();
    query.original = new File([blob], `image-${query.id}`, { type: blob.type });
    return query.original;
  }

  // ---- region: a box dragged on the query picture ------------------------------------------

  // The size a box is measured in: the API's answer for this query, else what the browser decoded
  // (an id query's preview is a thumbnail: its original size comes from /images/ID/info).
  async function imageSize(query) {
    if (query.size) return query.size;
    if (query.type === "id") {
      const info = await request(`images/${query.id}/info`);
      if (info.width && info.height) query.size = [info.width, info.height];
      return query.size || null;
    }
    const img = el.queryImg;
    return img.naturalWidth ? [img.naturalWidth, img.naturalHeight] : null;
  }

  const MIN_BOX = 8; // image pixels per side: the API refuses a smaller region

  function showBox() {
    const query = state.query;
    const box = query && query.box;
    el.boxClear.hidden = !box;
    el.regionText.hidden = !box;
    if (!box || !query.size || !el.queryImg.clientWidth) { el.box.hidden = true; return; }
    const [w, h] = query.size;
    const sx = el.queryImg.clientWidth / w, sy = el.queryImg.clientHeight / h;
    Object.assign(el.box.style, { left: `${box[0] * sx}px`, top: `${box[1] * sy}px`,
      width: `${(box[2] - box[0]) * sx}px`, height: `${(box[3] - box[1]) * sy}px` });
    el.box.hidden = false;
    el.regionText.textContent = `Region ${box[2] - box[0]}×${box[3] - box[1]} px at (${box[0]}, ${box[1]})`;
  }

  const drag = { start: null, moved: false, pointer: null };

  function pointOf(e) {
    const r = el.queryImg.getBoundingClientRect();
    return [Math.max(0, Math.min(r.width, e.clientX - r.left)), Math.max(0, Math.min(r.height, e.clientY - r.top))];
  }

  function drawDrag(a, b) {
    Object.assign(el.box.style, { left: `${Math.min(a[0], b[0])}px`, top: `${Math.min(a[1], b[1])}px`,
      width: `${Math.abs(a[0] - b[0])}px`, height: `${Math.abs(a[1] - b[1])}px` });
    el.box.hidden = false;
  }

  el.crop.addEventListener("pointerdown", (e) => {
    if (!state.query || e.button !== 0 || !el.queryImg.clientWidth) return;
    e.preventDefault();
    drag.start = pointOf(e);
    drag.moved = false;
    drag.pointer = e.pointerId;
    el.crop.setPointerCapture(e.pointerId);
  });
  el.crop.addEventListener("pointermove", (e) => {
    if (!drag.start || e.pointerId !== drag.pointer) return;
    const p = pointOf(e);
    if (Math.abs(p[0] - drag.start[0]) + Math.abs(p[1] - drag.start[1]) > 4) drag.moved = true;
    if (drag.moved) drawDrag(drag.start, p);
  });
  el.crop.addEventListener("pointercancel", () => { drag.start = null; showBox(); });
  el.crop.addEventListener("pointerup", async (e) => {
    if (!drag.start || e.pointerId !== drag.pointer) return;
    const a = drag.start, b = pointOf(e);
    drag.start = null;
    if (!drag.moved) return; // a click: the drop zone's own click picks another image
    const query = state.query;
    const size = await imageSize(query).catch(() => null);
    if (!size || query !== state.query) { showBox(); return; }
    const sx = size[0] / el.queryImg.clientWidth, sy = size[1] / el.queryImg.clientHeight;
    const box = [Math.round(Math.min(a[0], b[0]) * sx), Math.round(Math.min(a[1], b[1]) * sy),
      Math.round(Math.max(a[0], b[0]) * sx), Math.round(Math.max(a[1], b[1]) * sy)];
    box[2] = Math.min(box[2], size[0]);
    box[3] = Math.min(box[3], size[1]);
    if (box[2] - box[0] < MIN_BOX || box[3] - box[1] < MIN_BOX) {
      showBox();
      showError(new UserError("That region is too small", `Drag a box at least ${MIN_BOX}×${MIN_BOX} pixels of the image.`));
      return;
    }
    search({ ...query, box });
  });
  // A drag is not a click: it must not open the file chooser.
  el.crop.addEventListener("click", (e) => { if (drag.moved) { e.stopPropagation(); drag.moved = false; } });

  function clearBox() {
    if (state.query && state.query.box) search({ ...state.query, box: null });
  }
  el.boxClear.addEventListener("click", (e) => { e.stopPropagation(); clearBox(); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.query && state.query.box) clearBox(); });
  el.queryImg.addEventListener("load", showBox);
  window.addEventListener("resize", showBox);

  // ---- rendering -----------------------------------------------------------------------------

  function displayName(r) {
    const meta = r.meta || {};
    let name = meta.filename || meta.origin || r.source || `#${r.id}`;
    name = String(name).split(/[?#]/)[0].replace(/\/+$/, "");
    name = name.slice(name.lastIndexOf("/") + 1) || name;
    try { name = decodeURIComponent(name); } catch (err) { /* keep it as it is */ }
    return name;
  }

  // The API names a local file by its name only (never a server path) and an upload by a content
  // hash, so the line says what is worth reading: the URL an image came from, "uploaded", or the
  // source when it says more than the name above it.
  function sourceText(r, name) {
    const meta = r.meta || {};
    if (meta.origin) return String(meta.origin);
    const source = String(r.source || "");
    if (/^https?:\/\//i.test(source)) return source;
    if (source.startsWith("uploads/")) return "uploaded";
    return source && source !== name ? source : "";
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
    img.addEventListener("error", () => { img.style.visibility = "hidden"; });
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
    card.querySelector(".name").title = name;
    // Where the image came from, in full on the card (it wraps; no tooltip needed to read it).
    const source = card.querySelector(".source");
    const from = sourceText(r, name);
    if (from) source.textContent = from; else source.remove();
    const del = card.querySelector(".delete");
    del.setAttribute("aria-label", `Delete ${name}`);
    del.title = `Delete ${name} from the collection`;
    del.addEventListener("click", () => deleteImage(r, card));
    const rankEl = card.querySelector(".rank");
    const scoreEl = card.querySelector(".score");
    if (rank === undefined) {
      rankEl.remove();
      scoreEl.remove();
    } else {
      rankEl.textContent = `#${rank}`;
      // A bar reads as "how similar": only cosine is a similarity on a fixed scale. A Euclidean
      // distance is shown as a distance (lower is closer), a rank-fusion score as a plain number.
      const bar = card.querySelector(".bar");
      if (m === "cosine") bar.querySelector("i").style.width = `${Math.round(width * 100)}%`; else bar.remove();
      card.querySelector(".what").textContent = m === "euclidean" ? "distance" : m === "cosine" ? "" : "rank score";
      scoreEl.title = m === "euclidean" ? `Euclidean distance (lower is closer): ${r.score}`
        : m === "cosine" ? `cosine similarity: ${r.score}` : `${metricInfo(m)[1]} rank-fusion score (higher is closer; not a similarity): ${r.score}`;
      card.querySelector(".value").textContent = formatScore(score, m);
      const why = card.querySelector(".why");
      why.hidden = false;
      why.title = `Why this match: the points ${name} shares with the query`;
      why.setAttribute("aria-label", `Why ${name} matches`);
      why.addEventListener("click", () => explainMatch(r, name));
      const match = card.querySelector(".match");
      if (r.match) {
        match.dataset.match = r.match;
        match.textContent = r.match === "strong" ? "strong match" : "weak match";
        match.title = r.match === "strong" ? "Very likely the same object or scene"
          : "Only the nearest there is: probably not the same object or scene";
      }
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
    if (query.box) el.title.textContent += " (selected region)";
    // Every result weak: the collection holds nothing close; say so rather than let rank #1 look like a find.
    el.noMatch.hidden = !(results.length && results.every((r) => r.match === "weak"));
    const what = metricInfo(m)[1];
    el.meta.textContent = `${results.length} of ${data.indexed.toLocaleString()} images · ${what} · ${Math.round(data.took_ms)} ms`;
    if (!results.length) {
      el.grid.replaceChildren(emptyNote("The index has no images yet."));
      return;
    }
    el.grid.replaceChildren(...results.map((r, i) => makeCard(r, { rank: i + 1, score: r.score, width: widths[i], m })));
    el.hint.hidden = false;
  }

  // ---- why this match: the points a result shares with the query --------------------------------

  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.addEventListener("load", () => resolve(img));
      img.addEventListener("error", () => reject(new Error(`cannot load ${src}`)));
      img.src = src;
    });
  }

  async function explainMatch(r, name) {
    const query = state.query;
    if (!query) return;
    el.whyTitle.textContent = `Why ${name} matches`;
    el.whyText.textContent = "Finding the points the two pictures share…";
    el.whyCanvas.hidden = true;
    delete el.whyCanvas.dataset.lines;
    if (!el.whyDialog.open) el.whyDialog.showModal();
    try {
      const [data, result] = await Promise.all([
        searchOptions(query, { result_id: r.id }).then((options) => request("search/matches", options)),
        loadImage(originalUrl(r.id)).catch(() => loadImage(thumbUrl(r.id))),
      ]);
      if (query !== state.query || !el.whyDialog.open) return;
      drawMatches(data, el.queryImg, result);
      const where = query.box ? "the selected region of the query" : "the query";
      el.whyText.textContent = data.verified
        ? `${data.inliers} points of ${where} and ${name} line up under one view of the same thing `
          + `(${data.mutual} similar points found; ${data.min_inliers} in line count as verified).`
        : `Not verified: only ${data.inliers} of ${data.mutual} similar points line up (verification needs `
          + `${data.min_inliers}), so the likeness is in the overall look, not the same object or scene.`;
      el.whyDialog.dataset.verified = String(data.verified);
    } catch (err) {
      if (query !== state.query) return;
      el.whyText.textContent = `${err.title || "Something went wrong"}: ${err.message}`;
    }
  }

  const MAX_LINES = 80;

  // The two pictures side by side (one above the other on a narrow screen), a line per pair.
  function drawMatches(data, queryImg, resultImg) {
    const canvas = el.whyCanvas;
    const stacked = el.whyDialog.clientWidth < 560;
    const room = Math.max(240, canvas.parentElement.clientWidth);
    const gap = 12;
    const [qw, qh] = data.query_size, [rw, rh] = data.result_size;
    // a common height side by side, a common width stacked
    const s = stacked ? [room / qw, room / rw] : (() => { const h = Math.min(360, (room - gap) / (qw / qh + rw / rh)); return [h / qh, h / rh]; })();
    const q = { x: 0, y: 0, w: qw * s[0], h: qh * s[0] };
    const res = stacked ? { x: 0, y: q.h + gap, w: rw * s[1], h: rh * s[1] } : { x: q.w + gap, y: 0, w: rw * s[1], h: rh * s[1] };
    const width = stacked ? Math.max(q.w, res.w) : res.x + res.w, height = stacked ? res.y + res.h : Math.max(q.h, res.h);
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    canvas.style.aspectRatio = `${width} / ${height}`;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    if (queryImg.naturalWidth) ctx.drawImage(queryImg, q.x, q.y, q.w, q.h); // (a URL's picture may not have loaded)
    ctx.drawImage(resultImg, res.x, res.y, res.w, res.h);
    if (data.box) { // the searched region, outlined on the whole query
      const [x0, y0, x1, y1] = data.box;
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 2;
      ctx.strokeRect(x0 * s[0], y0 * s[0], (x1 - x0) * s[0], (y1 - y0) * s[0]);
    }
    // Every matched point as a dot; lines for an even sample of them (hundreds of lines are a blur).
    ctx.fillStyle = "#ffd34d";
    data.pairs.forEach(([ax, ay, bx, by]) => {
      ctx.fillRect(q.x + ax * s[0] - 1.5, q.y + ay * s[0] - 1.5, 3, 3);
      ctx.fillRect(res.x + bx * s[1] - 1.5, res.y + by * s[1] - 1.5, 3, 3);
    });
    const step = Math.max(1, data.pairs.length / MAX_LINES);
    const drawn = data.pairs.filter((_, i) => i % step < 1);
    ctx.lineWidth = 1.4;
    drawn.forEach(([ax, ay, bx, by], i) => {
      ctx.strokeStyle = `hsla(${(i * 47) % 360}, 90%, 55%, .85)`;
      ctx.beginPath();
      ctx.moveTo(q.x + ax * s[0], q.y + ay * s[0]);
      ctx.lineTo(res.x + bx * s[1], res.y + by * s[1]);
      ctx.stroke();
    });
    canvas.dataset.lines = String(drawn.length);
    canvas.dataset.points = String(data.pairs.length);
    canvas.hidden = false;
  }

  // ---- the collection: newest first, page by page, filtered ------------------------------------

  function whereList(text) {
    return text.split(/\s*[;\n]\s*/).map((w) => w.trim()).filter(Boolean);
  }

  async function browse(offset = 0) {
    state.query = null;
    const seq = ++state.seq;
    const b = state.browse;
    b.offset = Math.max(0, offset);
    resetQuery();
    document.title = PAGE_TITLE;
    el.collection.hidden = false;
    el.browseBack.hidden = true;
    el.noMatch.hidden = true;
    el.filterClear.hidden = !b.prefix && !b.where.length;
    if (!el.filterClear.hidden) el.filterBox.open = true;
    const params = new URLSearchParams({ offset: String(b.offset), limit: String(b.limit) });
    if (b.prefix) params.set("source_prefix", b.prefix);
    b.where.forEach((w) => params.append("where", w));
    const filtered = b.prefix || b.where.length;
    el.title.textContent = filtered ? "Matching images" : "The collection";
    setBusy(true);
    if (!el.grid.querySelector(".card")) renderSkeleton(b.limit);
    try {
      const page = await request(`images?${params}`);
      if (seq !== state.seq) return;
      hideError();
      b.total = page.total;
      el.meta.textContent = `${page.total.toLocaleString()} image${page.total === 1 ? "" : "s"}${filtered ? " match" : ""} · newest first`;
      if (!page.images.length && b.offset > 0 && page.total > 0) { browse(Math.max(0, page.total - b.limit)); return; }
      if (!page.images.length) {
        el.grid.replaceChildren(emptyNote(filtered ? "No image matches these filters."
          : "The collection is empty: add images with “+ Add images”, POST /images or `imagefinder add`."));
      } else {
        el.grid.replaceChildren(...page.images.map((r) => makeCard(r)));
      }
      const last = b.offset + page.images.length;
      el.pager.hidden = page.total <= b.limit && b.offset === 0;
      el.pageInfo.textContent = page.images.length ? `${b.offset + 1}–${last} of ${page.total.toLocaleString()}` : "";
      el.newer.disabled = b.offset === 0;
      el.older.disabled = last >= page.total;
      el.hint.hidden = !page.images.length;
    } catch (err) {
      if (seq !== state.seq) return;
      showError(err);
      el.meta.textContent = "";
      el.pager.hidden = true;
      el.hint.hidden = true;
      el.grid.replaceChildren(emptyNote("Fix the problem above, or clear the filters."));
    } finally {
      if (seq === state.seq) setBusy(false);
    }
  }

  // On a phone the filters start folded, so the pictures come first.
  if (window.matchMedia("(max-width: 560px)").matches) el.filterBox.open = false;

  el.filterForm.addEventListener("submit", (e) => {
    e.preventDefault();
    state.browse.prefix = el.prefix.value.trim();
    state.browse.where = whereList(el.where.value);
    browse(0);
  });
  el.filterClear.addEventListener("click", () => {
    el.prefix.value = "";
    el.where.value = "";
    state.browse.prefix = "";
    state.browse.where = [];
    browse(0);
  });
  el.newer.addEventListener("click", () => browse(state.browse.offset - state.browse.limit));
  el.older.addEventListener("click", () => browse(state.browse.offset + state.browse.limit));
  el.browseBack.addEventListener("click", showCollection);

  // ---- writes: the token, deleting, adding ----------------------------------------------------

  // The token is kept in sessionStorage, not localStorage: it then lives only as long as this
  // tab, is not shared with other tabs, and is not left on disk for whoever uses the browser
  // later. It is not a cookie either, so the browser never attaches it by itself to a request
  // another site makes; the page adds it, as Authorization: Bearer, to its own writes only.
  const TOKEN_KEY = "imagefinder.api-token";
  const savedToken = () => { try { return sessionStorage.getItem(TOKEN_KEY); } catch (err) { return null; } };
  function keepToken(token) {
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (err) { /* private mode: this page's memory only */ }
    state.token = token;
    el.tokenKept.hidden = false;
  }
  function forgetToken() {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (err) { /* nothing kept */ }
    state.token = null;
    el.tokenKept.hidden = true;
  }
  el.tokenForget.addEventListener("click", () => { forgetToken(); notify("The API token is forgotten: the next change asks for it."); });
  el.tokenKept.hidden = !savedToken();
  const currentToken = () => state.token || savedToken();

  // One question at a time, however many uploads are waiting for the answer.
  function askToken(why) {
    if (state.tokenAsk) return state.tokenAsk;
    state.tokenAsk = new Promise((resolve) => {
      const d = el.tokenDialog;
      el.tokenWhy.textContent = why;
      el.tokenInput.value = "";
      const done = () => {
        d.removeEventListener("close", done);
        state.tokenAsk = null;
        const token = d.returnValue === "ok" ? el.tokenInput.value.trim() : "";
        el.tokenInput.value = "";
        if (token) keepToken(token);
        resolve(token || null);
      };
      d.returnValue = "";
      d.addEventListener("close", done);
      d.showModal();
      el.tokenInput.focus();
    });
    return state.tokenAsk;
  }
  el.tokenCancel.addEventListener("click", () => el.tokenDialog.close(""));

  const NO_TOKEN = "Adding and deleting images on this server needs its API token (IMAGEFINDER_API_TOKEN). "
    + "It is kept in this browser tab only.";

  // A write (add/delete) with the token when the server wants one; 401: ask again and retry.
  async function writeRequest(path, options) {
    let why = NO_TOKEN;
    for (;;) {
      if (state.stats && state.stats.writes === "token" && !currentToken()) {
        if (options.onWait) options.onWait();
        const token = await askToken(why);
        if (!token) throw new UserError("Nothing was changed", "No API token was given.", 0);
      }
      const headers = new Headers(options.headers || {});
      const token = currentToken();
      if (token) headers.set("Authorization", `Bearer ${token}`);
      try {
        if (options.onSend) options.onSend();
        return await request(path, { ...options, headers });
      } catch (err) {
        if (err.status !== 401) throw err;
        forgetToken();
        if (state.stats) state.stats.writes = "token";
        why = "That token was not accepted by the server. Enter the API token again (the value of "
          + "IMAGEFINDER_API_TOKEN where the API runs).";
      }
    }
  }

  function notify(text, kind = "ok") {
    el.notice.textContent = text;
    el.notice.dataset.kind = kind;
    el.notice.hidden = false;
    clearTimeout(state.noticeTimer);
    state.noticeTimer = setTimeout(() => { el.notice.hidden = true; }, 8000);
  }

  async function deleteImage(r, card) {
    const name = card.dataset.name || `#${r.id}`;
    if (!window.confirm(`Delete “${name}” (image #${r.id}) from the collection?\n\nIt is removed from the index; `
      + "this cannot be undone from the page.")) return;
    card.classList.add("busy");
    try {
      await writeRequest(`images/${r.id}`, { method: "DELETE" });
      card.remove();
      notify(`Deleted “${name}” (image #${r.id}).`);
      loadStatus();
      if (!state.query) browse(state.browse.offset);
    } catch (err) {
      card.classList.remove("busy");
      showError(err);
    }
  }

  const IMAGE_NAME = /\.(jpe?g|png|gif|webp|bmp|tiff?|jfif|avif|heic)$/i;

  function addRow(name) {
    const li = document.createElement("li");
    li.dataset.state = "queued";
    const n = document.createElement("span");
    n.className = "n";
    n.textContent = name;
    const st = document.createElement("span");
    st.className = "st";
    st.textContent = "waiting";
    li.append(n, st);
    el.addList.append(li);
    return { set(kind, text) { li.dataset.state = kind; st.textContent = text; } };
  }

  // Files and URLs go one request each, in turn: each has its own line and its own result, and a
  // bad file does not fail the others.
  async function addAll(jobs, skipped = 0) {
    if (!jobs.length) {
      el.addSummary.textContent = skipped ? `No images to add (${skipped} file(s) that are not images skipped).` : "";
      return;
    }
    el.add.hidden = false;
    const rows = jobs.map((job) => addRow(job.name));
    const counts = { added: 0, known: 0, failed: 0 };
    const limit = state.stats && state.stats.max_upload_bytes;
    let stop = null;
    for (let i = 0; i < jobs.length; i++) {
      const job = jobs[i], row = rows[i];
      el.addSummary.textContent = `Adding ${i + 1} of ${jobs.length}…`;
      if (stop) { row.set("failed", stop); counts.failed++; continue; }
      if (job.file && limit && job.file.size > limit) {
        row.set("failed", `too large: ${(job.file.size / 1048576).toFixed(1)} MB, the limit is ${(limit / 1048576).toFixed(0)} MB`);
        counts.failed++;
        continue;
      }
      row.set("sending", job.file ? "uploading…" : "fetching…");
      let options;
      if (job.file) {
        const form = new FormData();
        form.append("file", job.file, job.file.name || "image");
        options = { method: "POST", body: form };
        options.onProgress = (done) => row.set("sending", done < 1 ? `uploading… ${Math.round(done * 100)}%` : "adding…");
      } else {
        options = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ url: job.url }) };
      }
      options.onWait = () => row.set("sending", "waiting for the API token…");
      options.onSend = () => row.set("sending", job.file ? "uploading…" : "fetching…");
      try {
        const data = await writeRequest("images", options);
        const image = data.images[0];
        if (image.created) { counts.added++; row.set("added", `added as #${image.id}`); }
        else { counts.known++; row.set("known", `already in the collection (#${image.id})`); }
      } catch (err) {
        counts.failed++;
        row.set("failed", err.message);
        if (err.status === 0 || err.status === 403) stop = `not sent: ${err.message}`; // the same for every file
      }
    }
    const parts = [`${counts.added} added`];
    if (counts.known) parts.push(`${counts.known} already there`);
    if (counts.failed) parts.push(`${counts.failed} failed`);
    if (skipped) parts.push(`${skipped} non-image file(s) skipped`);
    el.addSummary.textContent = `Done: ${parts.join(", ")}.`;
    el.addSummary.dataset.kind = counts.failed ? "failed" : "ok";
    loadStatus();
    if (!state.query) browse(0);
  }

  async function addFiles(files) {
    if (state.adding) return;
    state.adding = true;
    try {
      const list = Array.from(files);
      // Inside a folder, only what looks like an image is sent; files chosen one by one all are.
      const images = list.filter((f) => !f.webkitRelativePath || f.type.startsWith("image/") || IMAGE_NAME.test(f.name));
      await addAll(images.map((file) => ({ file, name: file.webkitRelativePath || file.name || "pasted image" })),
        list.length - images.length);
    } finally {
      state.adding = false;
    }
  }

  // A dropped folder: the browser hands over directory entries, read here recursively.
  async function filesOf(entries) {
    const out = [];
    let skipped = 0;
    const walk = async (entry, prefix) => {
      if (entry.isFile) {
        const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
        if (file.type.startsWith("image/") || IMAGE_NAME.test(file.name)) {
          out.push({ file, name: prefix + file.name });
        } else {
          skipped++;
        }
      } else if (entry.isDirectory) {
        const reader = entry.createReader();
        for (;;) {
          const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
          if (!batch.length) break;
          for (const child of batch) await walk(child, `${prefix}${entry.name}/`);
        }
      }
    };
    for (const entry of entries) await walk(entry, "");
    return { jobs: out, skipped };
  }

  el.addOpen.addEventListener("click", () => {
    el.add.hidden = false;
    el.add.scrollIntoView({ behavior: "smooth", block: "nearest" });
  });
  el.addClose.addEventListener("click", () => { el.add.hidden = true; });
  el.addFiles.addEventListener("change", () => { addFiles(el.addFiles.files); el.addFiles.value = ""; });
  el.addFolder.addEventListener("change", () => { addFiles(el.addFolder.files); el.addFolder.value = ""; });
  el.addDrop.addEventListener("dragover", (e) => { e.preventDefault(); e.stopPropagation(); el.addDrop.classList.add("over"); });
  el.addDrop.addEventListener("dragleave", () => el.addDrop.classList.remove("over"));
  el.addDrop.addEventListener("drop", async (e) => {
    e.preventDefault();
    e.stopPropagation(); // not a search: the page's own drop handler is for query images
    el.addDrop.classList.remove("over");
    dragDepth = 0;
    el.drop.classList.remove("over");
    const dt = e.dataTransfer;
    // The entries must be taken now: the DataTransfer is emptied once this handler returns.
    const entries = Array.from(dt.items || []).map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
    if (state.adding) return;
    if (entries.some((entry) => entry.isDirectory)) {
      state.adding = true;
      try {
        const { jobs, skipped } = await filesOf(entries);
        await addAll(jobs, skipped);
      } finally {
        state.adding = false;
      }
    } else if (dt.files && dt.files.length) {
      addFiles(dt.files);
    }
  });
  el.addUrlForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (state.adding) return;
    const lines = el.addUrls.value.split(/\s+/).map((l) => l.trim()).filter(Boolean);
    const bad = lines.filter((l) => !/^https?:\/\//i.test(l));
    if (bad.length) {
      showError(new UserError("Not an image URL", `${bad.map((b) => `“${b}”`).join(", ")}: each line needs a link that starts with http:// or https://.`));
      return;
    }
    state.adding = true;
    try {
      await addAll(lines.map((url) => ({ url, name: url })));
      el.addUrls.value = "";
    } finally {
      state.adding = false;
    }
  });

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

  function rerun() {
    if (!state.query) return;
    if (state.query.type === "url") history.replaceState(null, "", linkFor(state.query));
    search(state.query);
  }
  // ---- duplicates: the groups of `imagefinder duplicates`, keep one, remove the others ---------

  const TIER_NAMES = { exact: "Exact copies", near: "Edited copies", similar: "Similar photos" };
  const TIER_WHY = {
    exact: "the same file content",
    near: "the same picture: resized, re-encoded, cropped, mirrored, recoloured or captioned",
    similar: "other photos of the same object or scene",
  };

  function groupScore(g) {
    if (g.tier === "exact") return "identical files";
    const parts = [`cosine ≥ ${g.score.toFixed(3)}`];
    if (g.check !== null && g.check !== undefined) parts.push(`pixel check ≥ ${g.check.toFixed(3)}`);
    return parts.join(" · ");
  }

  // The one kept by default: the largest picture (most pixels; ties: the lowest id, the oldest).
  function largest(images) {
    const pixels = (r) => (r.width || 0) * (r.height || 0);
    return images.reduce((best, r) => (pixels(r) > pixels(best) ? r : best), images[0]);
  }

  function dupItem(r, n, keep) {
    const item = document.createElement("label");
    item.className = "dup-item";
    item.dataset.id = String(r.id);
    const radio = document.createElement("input");
    radio.type = "radio";
    radio.name = `keep-${n}`;
    radio.value = String(r.id);
    radio.checked = r.id === keep.id;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = displayName(r);
    img.src = thumbUrl(r.id);
    const name = document.createElement("span");
    name.className = "n";
    name.textContent = displayName(r);
    name.title = sourceText(r, name.textContent) || name.textContent;
    const dims = document.createElement("span");
    dims.className = "dims";
    dims.textContent = r.width && r.height ? `${r.width}×${r.height} · #${r.id}` : `#${r.id}`;
    const keepIt = document.createElement("span");
    keepIt.className = "keep write-only";
    keepIt.append(radio, "Keep this one");
    item.append(img, name, dims, keepIt);
    return item;
  }

  function dupGroup(g, n) {
    const li = document.createElement("li");
    li.className = "dup-group";
    li.dataset.tier = g.tier;
    li.dataset.ids = g.ids.join(",");
    const head = document.createElement("div");
    head.className = "dup-head";
    const title = document.createElement("strong");
    title.textContent = `${TIER_NAMES[g.tier] || g.tier} · ${g.ids.length} images`;
    title.title = TIER_WHY[g.tier] || "";
    const score = document.createElement("span");
    score.className = "muted score";
    score.textContent = groupScore(g);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove write-only";
    remove.textContent = `Remove the others (${g.ids.length - 1})`;
    head.append(title, score, remove);
    const row = document.createElement("div");
    row.className = "dup-images";
    const keep = largest(g.images);
    row.append(...g.images.map((r) => dupItem(r, n, keep)));
    remove.addEventListener("click", () => removeOthers(g, li));
    li.append(head, row);
    return li;
  }

  async function loadDuplicates() {
    const seq = ++state.dupsSeq;
    el.dupsMeta.textContent = "Looking for duplicates… (this can take a while on a large collection)";
    try {
      const report = await request(`duplicates?tier=${encodeURIComponent(el.dupsTier.value)}`);
      if (seq !== state.dupsSeq) return;
      const count = report.groups.length;
      el.dupsMeta.textContent = count
        ? `${count} group${count === 1 ? "" : "s"} · keep one picture of a group and remove the others`
        : "No duplicates found.";
      el.dupsList.replaceChildren(...report.groups.map(dupGroup));
    } catch (err) {
      if (seq !== state.dupsSeq) return;
      el.dupsMeta.textContent = "";
      el.dupsList.replaceChildren();
      showError(err);
    }
  }

  async function removeOthers(g, li) {
    const chosen = li.querySelector("input[type=radio]:checked");
    const keepId = chosen ? Number(chosen.value) : largest(g.images).id;
    const kept = g.images.find((r) => r.id === keepId);
    const others = g.images.filter((r) => r.id !== keepId);
    const names = others.map((r) => `“${displayName(r)}” (#${r.id})`).join(", ");
    if (!window.confirm(`Keep “${displayName(kept)}” (image #${keepId}) and remove the ${others.length} others `
      + `of this group from the collection?\n\n${names}\n\nThis cannot be undone from the page.`)) return;
    li.classList.add("busy");
    let removed = 0;
    try {
      for (const r of others) {
        await writeRequest(`images/${r.id}`, { method: "DELETE" });
        removed += 1;
      }
      notify(`Kept “${displayName(kept)}” (image #${keepId}); removed ${removed} other${removed === 1 ? "" : "s"}.`);
    } catch (err) {
      showError(err);
      if (removed) notify(`Removed ${removed} of ${others.length} before the error.`);
    } finally {
      li.classList.remove("busy");
      if (removed) {
        loadStatus();
        if (!state.query) browse(state.browse.offset);
        loadDuplicates();
      }
    }
  }

  el.dupsOpen.addEventListener("click", () => {
    el.dups.hidden = false;
    el.dups.scrollIntoView({ behavior: "smooth", block: "nearest" });
    loadDuplicates();
  });
  el.dupsClose.addEventListener("click", () => { el.dups.hidden = true; });
  el.dupsTier.addEventListener("change", loadDuplicates);

  el.k.addEventListener("change", rerun);
  document.querySelectorAll('input[name="metric"]').forEach((r) => r.addEventListener("change", rerun));

  loadStatus().then(() => { if (state.stats) { controlsFromLink(); route(); } });
})();
