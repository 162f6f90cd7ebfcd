// stylenat viewer: plain JavaScript, no build step, no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const CLIENT = Math.random().toString(36).slice(2, 12); // newest-wins id of this page
const SEED_MAX = 4294967295;
const state = { info: null, query: null, imageUrl: null, strip: null, loopTimer: null, version: 0 };

// ------------------------------------------------------------------ requests: one in flight per endpoint
// A new request replaces the one waiting to be sent; the server also drops superseded ones (409).
const lanes = {};
function latest(lane, url, onResponse) {
  const l = lanes[lane] || (lanes[lane] = { busy: false, next: null });
  l.next = { url, onResponse };
  if (!l.busy) pump(l);
}
async function pump(l) {
  const job = l.next;
  l.next = null;
  if (!job) return;
  l.busy = true;
  try {
    const response = await fetch(job.url);
    if (response.status === 409) return; // superseded by a newer request of ours
    if (!response.ok) {
      const body = await response.json().catch(() => ({ detail: response.statusText }));
      showError(body.detail || response.statusText);
      return;
    }
    showError("");
    await job.onResponse(response);
  } catch (err) {
    showError(String(err));
  } finally {
    l.busy = false;
    if (l.next) pump(l);
  }
}
function showError(text) { $("error").textContent = text; }

// ------------------------------------------------------------------ parameters
function intValue(id) { const v = parseInt($(id).value, 10); return Number.isFinite(v) ? v : 0; }
function imageParams() {
  const p = new URLSearchParams({ seed: intValue("seed"), psi: Number($("psi").value).toFixed(2) });
  const n = state.info ? state.info.n_latent : 0;
  if (intValue("cutoff") < n) p.set("cutoff", intValue("cutoff"));
  if (state.info && state.info.c_dim > 0) p.set("class_idx", $("class").value);
  if ($("mix").checked) {
    p.set("mix_seed", intValue("mix-seed"));
    p.set("mix_from", intValue("mix-from"));
    p.set("mix_to", intValue("mix-to"));
  }
  return p;
}
function stripParams(steps) {
  const p = new URLSearchParams({
    seed_a: intValue("seed"), seed_b: intValue("seed-b"), steps, space: $("space").value,
    psi: Number($("psi").value).toFixed(2),
  });
  const n = state.info ? state.info.n_latent : 0;
  if (intValue("cutoff") < n) p.set("cutoff", intValue("cutoff"));
  if (state.info && state.info.c_dim > 0) p.set("class_idx", $("class").value);
  return p;
}
function withClient(p) { p.set("client", CLIENT); return p; }

// ------------------------------------------------------------------ the image
function updateLabels() {
  $("psi-out").textContent = Number($("psi").value).toFixed(2);
  const n = state.info ? state.info.n_latent : 0;
  $("cutoff-out").textContent = intValue("cutoff") >= n ? "all" : `first ${intValue("cutoff")} ws`;
  if (intValue("mix-to") <= intValue("mix-from")) $("mix-to").value = intValue("mix-from") + 1;
  $("mix-out").textContent = `ws ${intValue("mix-from")}–${intValue("mix-to") - 1}`;
  $("video-link").href = "api/video?" + stripParams(intValue("video-steps")).toString();
}
function render() {
  updateLabels();
  const params = imageParams();
  latest("image", "api/image?" + withClient(params).toString(), async (response) => {
    const blob = await response.blob();
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.imageUrl = URL.createObjectURL(blob);
    const img = $("image");
    await new Promise((resolve) => { img.onload = resolve; img.onerror = resolve; img.src = state.imageUrl; });
    state.version += 1;
    img.dataset.params = params.toString();
    img.dataset.version = String(state.version);
    $("render-ms").textContent = response.headers.get("X-Render-Ms");
    $("cache").textContent = response.headers.get("X-Cache") === "hit" ? "(cached)" : "";
    if (state.query) requestAttention();
  });
}
function setSeed(seed) {
  seed = Math.max(0, Math.min(SEED_MAX, Math.floor(seed) || 0));
  $("seed").value = seed;
  $("seed-slider").value = Math.min(seed, Number($("seed-slider").max));
  render();
}

// ------------------------------------------------------------------ attention
const INFERNO = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]];
function inferno(t) {
  const x = Math.max(0, Math.min(1, t)) * (INFERNO.length - 1);
  const i = Math.min(INFERNO.length - 2, Math.floor(x));
  const f = x - i;
  return INFERNO[i].map((a, c) => a + f * (INFERNO[i + 1][c] - a));
}
function drawMarker() {
  const canvas = $("marker"), R = state.info.resolution;
  canvas.width = R * 4; canvas.height = R * 4;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.query) return;
  ctx.strokeStyle = "cyan"; ctx.lineWidth = 1.5;
  ctx.strokeRect(state.query.x * 4 - 1, state.query.y * 4 - 1, 6, 6);
}
function stagePixels(r) {
  // the image on screen box-averaged to the stage grid (r x r), as the server's stage_image does
  const canvas = document.createElement("canvas");
  canvas.width = r; canvas.height = r;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = "high";
  ctx.drawImage($("image"), 0, 0, r, r);
  return ctx.getImageData(0, 0, r, r).data;
}
function groupFigure(layer, group, base) {
  const r = layer.stage_resolution, scale = Math.max(1, Math.ceil(192 / r));
  const canvas = document.createElement("canvas");
  canvas.width = r * scale; canvas.height = r * scale;
  canvas.className = "overlay";
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(r, r);
  for (let i = 0; i < base.length; i += 4) {
    image.data[i] = base[i] * 0.35; image.data[i + 1] = base[i + 1] * 0.35; image.data[i + 2] = base[i + 2] * 0.35; image.data[i + 3] = 255;
  }
  const max = Math.max(1e-12, ...group.weights.flat());
  group.rows.forEach((row, a) => group.cols.forEach((col, b) => {
    const [cr, cg, cb] = inferno(group.weights[a][b] / max), o = (row * r + col) * 4;
    image.data[o] = 0.2 * base[o] + 0.8 * cr; image.data[o + 1] = 0.2 * base[o + 1] + 0.8 * cg; image.data[o + 2] = 0.2 * base[o + 2] + 0.8 * cb;
  }));
  const small = document.createElement("canvas");
  small.width = r; small.height = r;
  small.getContext("2d").putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, r * scale, r * scale);
  ctx.strokeStyle = "cyan"; ctx.lineWidth = Math.max(1, scale / 4);
  ctx.strokeRect(layer.query[1] * scale, layer.query[0] * scale, scale, scale);
  const figure = document.createElement("figure");
  const caption = document.createElement("figcaption");
  const heads = group.heads.length > 1 ? `${group.heads[0]}–${group.heads[group.heads.length - 1]}` : `${group.heads[0]}`;
  caption.textContent = `group ${group.group} (${group.dilation > 1 ? "dilated" : "local"}): k=${group.kernel}, d=${group.dilation}, heads ${heads}; ` +
    `mean distance here ${group.distance_image_px.toFixed(1)} px, over the map ${group.map_distance_image_px.toFixed(1)} px`;
  figure.append(canvas, caption);
  return figure;
}
function showAttention(data) {
  const box = $("attention-layers");
  box.replaceChildren();
  for (const layer of data.layers) {
    const r = layer.stage_resolution, base = stagePixels(r);
    const div = document.createElement("div");
    div.className = "layer";
    const title = document.createElement("h3");
    title.textContent = `${layer.name}: ${r}×${r}, query (${layer.query[0]}, ${layer.query[1]})`;
    const groups = document.createElement("div");
    groups.className = "groups";
    layer.groups.forEach((g) => groups.append(groupFigure(layer, g, base)));
    div.append(title, groups);
    box.append(div);
  }
  $("attention-status").textContent = `server ${data.render_ms} ms${data.cached ? " (cached)" : ""}; weights averaged over each group's heads, keys coloured by weight (brightest = largest).`;
}
function requestAttention() {
  const p = imageParams();
  p.set("x", state.query.x); p.set("y", state.query.y);
  $("attention-query").textContent = `at pixel (y=${state.query.y}, x=${state.query.x})`;
  $("attention-status").textContent = "computing…";
  latest("attention", "api/attention?" + withClient(p).toString(), async (response) => showAttention(await response.json()));
}
function onImageClick(event) {
  if (!state.info) return;
  const img = $("image"), R = state.info.resolution, rect = img.getBoundingClientRect();
  const x = Math.min(R - 1, Math.max(0, Math.floor((event.clientX - rect.left) / rect.width * R)));
  const y = Math.min(R - 1, Math.max(0, Math.floor((event.clientY - rect.top) / rect.height * R)));
  state.query = { x, y };
  drawMarker();
  requestAttention();
}

// ------------------------------------------------------------------ interpolation
function stopLoop() {
  if (state.loopTimer) clearInterval(state.loopTimer);
  state.loopTimer = null;
  $("play").textContent = "Play loop";
}
function interpolate() {
  stopLoop();
  const steps = Math.max(2, Math.min(32, intValue("steps")));
  latest("interpolation", "api/interpolation?" + withClient(stripParams(steps)).toString(), async (response) => {
    const url = URL.createObjectURL(await response.blob());
    const img = $("strip");
    await new Promise((resolve) => { img.onload = resolve; img.src = url; });
    state.strip = { img, frames: steps };
    $("play").disabled = false;
    $("strip-timing").textContent = `server ${response.headers.get("X-Render-Ms")} ms for ${steps} frames${response.headers.get("X-Cache") === "hit" ? " (cached)" : ""}`;
    drawLoopFrame(0);
  });
}
function drawLoopFrame(i) {
  const { img, frames } = state.strip, size = img.naturalHeight, canvas = $("loop");
  canvas.width = size; canvas.height = size;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, i * size, 0, size, size, 0, 0, size, size);
  canvas.dataset.frame = String(i);
}
function togglePlay() {
  if (state.loopTimer) { stopLoop(); return; }
  const n = state.strip.frames, order = [...Array(n).keys(), ...[...Array(n).keys()].slice(1, -1).reverse()];
  let k = 0;
  state.loopTimer = setInterval(() => { drawLoopFrame(order[k % order.length]); k += 1; }, 80);
  $("play").textContent = "Stop";
}

// ------------------------------------------------------------------ start
async function start() {
  const response = await fetch("api/info");
  const info = await response.json();
  state.info = info;
  const n = info.n_latent;
  for (const id of ["cutoff"]) { $(id).max = n; $(id).value = n; }
  $("mix-from").max = n - 1;
  $("mix-to").max = n; $("mix-to").value = Math.max(1, Math.floor(n / 2));
  if (info.c_dim > 0) {
    $("class-box").hidden = false;
    info.class_names.forEach((name, i) => $("class").append(new Option(`${i}: ${name}`, i)));
  }
  const kimg = info.kimg === null || info.kimg === undefined ? "kimg unknown" : `${info.kimg} kimg`;
  $("snapshot").textContent = `${info.checkpoint || "generator"} · ${kimg} · ${info.resolution}×${info.resolution} · ${info.device} ${info.compute_dtype}`;
  $("config").textContent = JSON.stringify({ kimg: info.kimg, meta: info.meta, config: info.config }, null, 2);
  drawMarker();

  $("seed").addEventListener("input", () => setSeed(intValue("seed")));
  $("seed-slider").addEventListener("input", () => setSeed(intValue("seed-slider")));
  $("random").addEventListener("click", () => setSeed(Math.floor(Math.random() * (SEED_MAX + 1))));
  for (const id of ["psi", "cutoff", "class", "mix", "mix-seed", "mix-from", "mix-to"]) $(id).addEventListener("input", render);
  for (const id of ["seed-b", "space", "video-steps", "steps"]) $(id).addEventListener("input", updateLabels);
  $("image").addEventListener("click", onImageClick);
  $("strip-button").addEventListener("click", interpolate);
  $("play").addEventListener("click", togglePlay);
  render();
}
start().catch((err) => showError(String(err)));
