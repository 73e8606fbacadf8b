// metricvision search page: plain JS, no build step. Query state (text, k, item, heat, views, weight) lives in the URL.
"use strict";

const $ = (id) => document.getElementById(id);
let uploaded = null; // File chosen or dropped (not representable in the URL)
let itemQuery = null; // id of a KB item used as the image query ("search with this result")
// boxes are drawn only on confident hits: a score of at least this fraction of the best hit's
const BOX_CONFIDENCE = 0.75;
// a server started with API keys answers 401 without one: the page asks for it, keeps it in
// localStorage and sends it as X-API-Key on every API call
const KEY_STORE = "metricvision-api-key";

function apiKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

function api(url, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("X-API-Key", apiKey());
  return fetch(url, { ...options, headers });
}

// <img> cannot send a header: with a key, API images are fetched and shown from blob URLs
function setSrc(img, url) {
  if (!apiKey() || !url.startsWith("/v1/")) {
    img.src = url;
    return;
  }
  api(url)
    .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`error ${r.status}`))))
    .then((blob) => { img.src = URL.createObjectURL(blob); })
    .catch(() => img.dispatchEvent(new Event("error")));
}

function askForKey(message) {
  if ($("key-form").hidden) $("api-key").focus();
  $("key-form").hidden = false;
  setStatus(message + " Enter an API key above.", true);
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function showPreview(src) {
  $("preview").hidden = !src;
  $("clear-image").hidden = !src;
  $("drop-label").hidden = !!src;
  if (src) setSrc($("preview"), src);
  else $("preview").removeAttribute("src");
}

function previewFailed() {
  // no broken-image icon: an unknown item id (e.g. from an old URL) is dropped and named;
  // an uploaded file the browser cannot show keeps its × button (the server says what is wrong)
  if (itemQuery === null) {
    $("preview").hidden = true;
    return;
  }
  const missing = itemQuery;
  itemQuery = null;
  showPreview(null);
  setStatus(`Item ${missing} is not in this knowledge base.`, true);
}

function setImage(file) {
  uploaded = file;
  itemQuery = null;
  showPreview(file ? URL.createObjectURL(file) : null);
}

function stateToUrl() {
  const p = new URLSearchParams();
  const text = $("text").value.trim();
  if (text) p.set("q", text);
  if (itemQuery !== null) p.set("item", String(itemQuery));
  p.set("k", $("k").value);
  if ($("heat").checked) p.set("heat", "1");
  if ($("views").checked) p.set("views", "1");
  if ($("weight").value !== "0.5") p.set("w", $("weight").value);
  if ($("mode").value !== "vector") p.set("mode", $("mode").value);
  history.pushState(null, "", "?" + p.toString());
}

function urlToState() {
  const p = new URLSearchParams(location.search);
  $("text").value = p.get("q") || "";
  $("k").value = p.get("k") || "12";
  $("heat").checked = p.get("heat") === "1";
  $("views").checked = p.get("views") === "1";
  $("weight").value = p.get("w") || "0.5";
  $("mode").value = ["hybrid", "keyword"].includes(p.get("mode")) ? p.get("mode") : "vector";
  const item = p.get("item");
  itemQuery = item !== null && /^\d+$/.test(item) ? Number(item) : null;
  uploaded = null;
  showPreview(itemQuery !== null ? `/v1/items/${itemQuery}/image` : null);
  return Boolean(p.get("q") || itemQuery !== null);
}

function renderHits(hits) {
  const grid = $("results");
  grid.replaceChildren();
  grid.classList.toggle("hide-heat", !$("heat").checked);
  const best = hits.length ? Math.max(...hits.map((h) => h.score)) : 0;
  for (const h of hits) {
    const card = document.createElement("article");
    card.className = "hit";
    card.dataset.id = h.id;
    const frame = document.createElement("div");
    frame.className = "frame";
    const img = document.createElement("img");
    img.alt = h.caption;
    img.title = h.caption || `item ${h.id}`;
    img.addEventListener("error", () => {
      const gap = document.createElement("div");
      gap.className = "missing";
      gap.textContent = "image unavailable";
      img.replaceWith(gap);
    }, { once: true });
    setSrc(img, h.image_url);
    frame.append(img);
    if (h.heatmap) {
      const heat = document.createElement("img");
      heat.className = "heat";
      heat.alt = "";
      heat.src = "data:image/png;base64," + h.heatmap;
      frame.append(heat);
    }
    if (h.boxes && h.size && best > 0 && h.score >= BOX_CONFIDENCE * best) {
      for (const box of h.boxes) frame.append(boxElement("box", box, h.size[0], h.size[1]));
    }
    const region = h.regions && h.regions.length ? h.regions[0] : null;
    if (region) drawRegion(frame, img, region.box);
    const meta = document.createElement("div");
    meta.className = "meta";
    const cap = document.createElement("div");
    cap.className = "caption";
    cap.textContent = h.caption || `item ${h.id}`;
    const details = Object.entries(h.metadata || {}).map(([k, v]) => `${k}: ${v}`);
    cap.title = [h.caption || `item ${h.id}`, ...details].join("\n");
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = `#${h.id} · score ${h.score.toFixed(3)}`;
    const again = document.createElement("button");
    again.type = "button";
    again.className = "again";
    again.textContent = "search with this result";
    again.addEventListener("click", () => {
      uploaded = null;
      itemQuery = h.id;
      $("text").value = "";
      showPreview(h.image_url);
      runSearch(true);
    });
    meta.append(cap, score, again);
    if (region) {
      const byRegion = document.createElement("button");
      byRegion.type = "button";
      byRegion.className = "again by-region";
      byRegion.textContent = "search with this region";
      byRegion.addEventListener("click", () => searchWithRegion(img, region.box));
      meta.append(byRegion);
    }
    card.append(frame, meta);
    grid.append(card);
  }
}

// a box [x0, y0, x1, y1] in pixels of a w x h image, placed in percent over its frame
function boxElement(className, [x0, y0, x1, y1], w, h) {
  const b = document.createElement("div");
  b.className = className;
  Object.assign(b.style, {
    left: (100 * x0 / w) + "%", top: (100 * y0 / h) + "%",
    width: (100 * (x1 - x0) / w) + "%", height: (100 * (y1 - y0) / h) + "%",
  });
  return b;
}

// the best region of a hit (KB built with --regions): a dashed box over the image, in image pixels
function drawRegion(frame, img, box) {
  const place = () => {
    if (img.naturalWidth && img.naturalHeight) frame.append(boxElement("region", box, img.naturalWidth, img.naturalHeight));
  };
  if (img.complete && img.naturalWidth) place();
  else img.addEventListener("load", place, { once: true });
}

// crop a hit's region out of its (same-origin) image and search with the crop as the image query
function searchWithRegion(img, box) {
  const [x0, y0, x1, y1] = box.map(Math.round);
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, x1 - x0);
  canvas.height = Math.max(1, y1 - y0);
  canvas.getContext("2d").drawImage(img, x0, y0, canvas.width, canvas.height, 0, 0, canvas.width, canvas.height);
  canvas.toBlob((blob) => {
    setImage(new File([blob], "region.png", { type: "image/png" }));
    $("text").value = "";
    runSearch(false);
  }, "image/png");
}

async function runSearch(pushUrl) {
  const text = $("text").value.trim();
  if (!text && !uploaded && itemQuery === null) {
    setStatus("Type a text or give an image.", true);
    return;
  }
  if (pushUrl) stateToUrl();
  const form = new FormData();
  if (text) form.append("text", text);
  if (uploaded) form.append("image", uploaded);
  else if (itemQuery !== null) form.append("item_id", String(itemQuery));
  form.append("k", $("k").value);
  form.append("with_heatmap", $("heat").checked ? "true" : "false");
  form.append("object_views", $("views").checked ? "true" : "false");
  form.append("text_weight", $("weight").value);
  form.append("mode", $("mode").value);
  setStatus("Searching…");
  const t0 = performance.now();
  try {
    const r = await api("/v1/search", { method: "POST", body: form });
    const body = await r.json();
    if (r.status === 401 || r.status === 403) {
      askForKey(body.error || `error ${r.status}`);
      return;
    }
    if (!r.ok) {
      setStatus(body.error || body.detail || `error ${r.status}`, true);
      return;
    }
    renderHits(body.hits);
    setStatus(`${body.hits.length} results in ${Math.round(performance.now() - t0)} ms`);
  } catch (e) {
    setStatus("Search failed: " + e, true);
  }
}

function wireDrop() {
  const drop = $("drop");
  drop.addEventListener("click", (e) => { if (e.target.id !== "clear-image") $("file").click(); });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  $("file").addEventListener("change", () => { if ($("file").files.length) { setImage($("file").files[0]); runSearch(true); } });
  $("clear-image").addEventListener("click", () => { setImage(null); itemQuery = null; $("file").value = ""; });
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (e) => {
    const f = e.dataTransfer && e.dataTransfer.files[0];
    if (f && f.type.startsWith("image/")) { setImage(f); runSearch(true); }
    else setStatus("Drop an image file.", true);
  });
}

async function init() {
  wireDrop();
  $("preview").addEventListener("error", previewFailed);
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(true); });
  $("heat").addEventListener("change", () => $("results").classList.toggle("hide-heat", !$("heat").checked));
  window.addEventListener("popstate", () => { if (urlToState()) runSearch(false); });
  $("key-form").hidden = !apiKey();
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    localStorage.setItem(KEY_STORE, $("api-key").value.trim());
    shownVersion = null;
    setStatus("");
    await refreshInfo();
    if (urlToState()) runSearch(false);
  });
  await refreshInfo();
  setInterval(refreshInfo, 2000); // items written by `kb add` or POST /v1/items appear without a reload
  if (urlToState()) runSearch(false);
}

let shownVersion = null;

async function refreshInfo() {
  try {
    const r = await api("/v1/info");
    const info = await r.json();
    if (r.status === 401 || r.status === 403) {
      askForKey(info.error || `error ${r.status}`);
      return;
    }
    if (info.version === shownVersion) return;
    shownVersion = info.version;
    $("kb-info").textContent = `${info.items} items · ${info.model_card.backbone}` +
      (info.model_card.text_model ? ` + ${info.model_card.text_model}` : " (image search only)");
    const strip = $("recent");
    strip.replaceChildren();
    for (const it of info.recent || []) {
      const fig = document.createElement("figure");
      fig.dataset.id = it.id;
      const img = document.createElement("img");
      setSrc(img, it.image_url);
      img.alt = it.caption;
      const cap = document.createElement("figcaption");
      cap.textContent = it.caption;
      fig.append(img, cap);
      strip.append(fig);
    }
    $("recent-box").hidden = !strip.children.length;
  } catch (e) { /* the page still works without the banner */ }
}

init();
