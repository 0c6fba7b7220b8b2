// The page of `knet serve`: upload images to POST /v1/segment, draw the overlay in the browser
// (so the opacity slider and hovering need no new request), list the classes or segments, offer
// the files `knet predict` writes. Plain JavaScript, no dependencies, nothing from the network
// but this server.
"use strict";

const state = {
  model: null,          // GET /v1/model
  opacity: 0.5,
  cards: [],            // every shown result, redrawn when the opacity changes
  running: 0,           // uploads in flight (the server queues too; this keeps the page polite)
  waiting: [],          // files not sent yet
};
const MAX_IN_FLIGHT = 4;
const MAX_RETRIES = 30;

const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const percent = (fraction) => `${(100 * fraction).toFixed(1)}%`;
const rgb = (colour) => `rgb(${colour[0]}, ${colour[1]}, ${colour[2]})`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- the model ---------------------------------------------------------------------------------
async function loadModel() {
  const info = $("#model-info");
  try {
    const response = await fetch("/v1/model");
    const model = await response.json();
    if (!response.ok) throw new Error(model.error || response.statusText);
    state.model = model;
    info.textContent = `${model.name} · ${model.task} · ${model.num_classes} classes · ${model.device}`;
    info.classList.remove("muted");
    $("#limits").textContent = `up to ${(model.max_pixels / 1e6).toFixed(1)} megapixels and ` +
      `${model.max_upload_mb} MiB per image`;
    if (model.tta_available) {
      $("#tta-control").hidden = false;
      $("#tta").checked = model.tta;
    }
  } catch (err) {
    info.textContent = `cannot reach the model: ${err.message}`;
    info.classList.add("error");
  }
}

// ---- uploading ---------------------------------------------------------------------------------
function addFiles(files) {
  for (const file of files) {
    if (file.type && !file.type.startsWith("image/")) continue;
    const card = newCard(file);
    state.waiting.push({ file, card });
  }
  pump();
}

function pump() {
  while (state.running < MAX_IN_FLIGHT && state.waiting.length) {
    const { file, card } = state.waiting.shift();
    state.running += 1;
    segment(file, card).finally(() => { state.running -= 1; pump(); });
  }
}

async function segment(file, card) {
  const started = performance.now();
  for (let attempt = 0; ; attempt += 1) {
    const form = new FormData();
    form.append("image", file, file.name);
    if (state.model && state.model.tta_available) form.append("tta", $("#tta").checked ? "true" : "false");
    let response;
    try {
      response = await fetch("/v1/segment", { method: "POST", body: form });
    } catch (err) {
      return fail(card, `the server did not answer (${err.message})`);
    }
    if (response.status === 503 && attempt < MAX_RETRIES) {
      // The server's queue is full: wait as long as it asks, then send again.
      const seconds = Number(response.headers.get("Retry-After")) || 1;
      setStatus(card, `the server is busy; retrying in ${seconds} s…`);
      await sleep(1000 * seconds);
      continue;
    }
    let body;
    try {
      body = await response.json();
    } catch (err) {
      return fail(card, `${response.status} ${response.statusText}`);
    }
    if (!response.ok) return fail(card, body.error || `${response.status} ${response.statusText}`);
    try {
      await show(card, file, body, performance.now() - started);
    } catch (err) {
      fail(card, `cannot show the result: ${err.message}`);
    }
    return;
  }
}

// ---- a result ----------------------------------------------------------------------------------
function newCard(file) {
  const node = $("#result-template").content.firstElementChild.cloneNode(true);
  $(".title", node).textContent = file.name;
  node.dataset.state = "waiting";
  $("#results").prepend(node);
  return { node, file };
}

function setStatus(card, text) {
  $(".status", card.node).textContent = text;
}

function fail(card, message) {
  card.node.dataset.state = "error";
  const status = $(".status", card.node);
  status.textContent = message;
  status.classList.add("error");
}

function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

// The PNG's exact pixel values (no colour management, no premultiplied alpha): class indices of
// a label map, or the id = R + 256 G + 256^2 B of a segment map. Browsers give 8 bits per
// channel, so a label map of more than 255 classes (16-bit) cannot be read here.
async function pngKeys(base64, width, height, rgbIds) {
  const blob = new Blob([base64Bytes(base64)], { type: "image/png" });
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = el("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const pixels = ctx.getImageData(0, 0, width, height).data;
  const keys = new Int32Array(width * height);
  for (let i = 0; i < keys.length; i += 1) {
    const p = 4 * i;
    keys[i] = rgbIds ? pixels[p] + 256 * pixels[p + 1] + 65536 * pixels[p + 2] : pixels[p];
  }
  return keys;
}

// A canvas of the given size whose pixel i is paint(keys[i]) -> [r, g, b, a] or null (transparent).
function layer(width, height, keys, paint) {
  const canvas = el("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(width, height);
  const cache = new Map();
  for (let i = 0; i < keys.length; i += 1) {
    let colour = cache.get(keys[i]);
    if (colour === undefined) {
      colour = paint(keys[i]);
      cache.set(keys[i], colour);
    }
    if (colour) image.data.set(colour, 4 * i);
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}

async function show(card, file, body, roundTripMs) {
  const { width, height } = body;
  const semantic = body.label_map !== undefined && body.label_map !== null;
  const keys = await pngKeys(semantic ? body.label_map : body.segment_map, width, height, !semantic);
  const palette = (state.model && state.model.palette) || [];
  // Keys: class indices (semantic) or segment ids (panoptic, instance; 0 = none).
  const entries = semantic
    ? body.classes.map((c) => ({ key: c.index, name: c.name, colour: c.colour, text: percent(c.fraction) }))
    : body.segments.map((s) => ({
      key: s.id, name: s.name, colour: s.colour,
      text: `${s.score.toFixed(2)} · ${percent(s.area / (width * height))}`,
    }));
  const colourOf = new Map(entries.map((e) => [e.key, e.colour]));
  if (semantic) palette.forEach((colour, index) => { if (!colourOf.has(index)) colourOf.set(index, colour); });

  card.width = width;
  card.height = height;
  card.keys = keys;
  card.entries = entries;
  card.colours = layer(width, height, keys, (key) => {
    const colour = colourOf.get(key);
    return colour && (semantic || key > 0) ? [colour[0], colour[1], colour[2], 255] : null;
  });
  card.highlight = null;
  card.highlights = new Map();
  try {
    card.bitmap = await createImageBitmap(file);
  } catch (err) {
    card.bitmap = null;  // a format this browser does not show (the server read it)
  }

  const imageCanvas = $("canvas.image", card.node);
  for (const canvas of [imageCanvas, $("canvas.overlay", card.node)]) {
    canvas.width = width;
    canvas.height = height;
  }
  const imageCtx = imageCanvas.getContext("2d");
  if (card.bitmap) imageCtx.drawImage(card.bitmap, 0, 0, width, height);
  else imageCtx.fillText("this browser cannot show the image", 8, 16);

  buildLegend(card, semantic);
  buildDownloads(card, body, semantic);
  const batch = body.batch > 1 ? `, a batch of ${body.batch}` : "";
  setStatus(card, `${body.model} · ${body.task}${body.tta ? " · multi-scale + flip" : ""} · ` +
    `${width}×${height} · ${body.time_ms.toFixed(0)} ms on the server (model ${body.inference_ms.toFixed(0)} ms` +
    `${batch}, queue ${body.queue_ms.toFixed(0)} ms) · ${roundTripMs.toFixed(0)} ms round trip`);
  card.node.dataset.task = body.task;
  draw(card);
  attachHover(card);
  state.cards.push(card);
  card.node.dataset.state = "done";
  $("canvas.overlay", card.node).dataset.ready = "1";
}

function draw(card) {
  const canvas = $("canvas.overlay", card.node);
  const ctx = canvas.getContext("2d");
  ctx.globalAlpha = 1;
  ctx.clearRect(0, 0, card.width, card.height);
  if (card.bitmap) ctx.drawImage(card.bitmap, 0, 0, card.width, card.height);
  ctx.globalAlpha = state.opacity;  // image * (1 - a) + colour * a, as knet predict's overlays
  ctx.drawImage(card.colours, 0, 0);
  ctx.globalAlpha = 1;
  if (card.highlight !== null) ctx.drawImage(highlightLayer(card, card.highlight), 0, 0);
}

// Everything but the hovered class or segment darkened.
function highlightLayer(card, key) {
  if (!card.highlights.has(key)) {
    card.highlights.set(key, layer(card.width, card.height, card.keys,
      (k) => (k === key ? null : [0, 0, 0, 150])));
  }
  return card.highlights.get(key);
}

function setHighlight(card, key) {
  if (card.highlight === key) return;
  card.highlight = key;
  for (const item of card.node.querySelectorAll(".legend li")) {
    item.classList.toggle("active", key !== null && Number(item.dataset.key) === key);
  }
  const entry = card.entries.find((e) => e.key === key);
  $(".hover-caption", card.node).textContent = entry ? `${entry.name} · ${entry.text}` : "overlay";
  draw(card);
}

function attachHover(card) {
  const canvas = $("canvas.overlay", card.node);
  canvas.addEventListener("mousemove", (event) => {
    const box = canvas.getBoundingClientRect();
    const x = Math.floor(((event.clientX - box.left) / box.width) * card.width);
    const y = Math.floor(((event.clientY - box.top) / box.height) * card.height);
    if (x < 0 || y < 0 || x >= card.width || y >= card.height) return;
    const key = card.keys[y * card.width + x];
    setHighlight(card, card.entries.some((e) => e.key === key) ? key : null);
  });
  canvas.addEventListener("mouseleave", () => setHighlight(card, null));
}

function buildLegend(card, semantic) {
  const legend = $(".legend", card.node);
  legend.replaceChildren();
  legend.dataset.kind = semantic ? "classes" : "segments";
  for (const entry of card.entries) {
    const item = el("li", { "data-key": String(entry.key) },
      el("span", { class: "swatch", style: `background: ${rgb(entry.colour)}` }),
      el("span", { class: "name" }, entry.name),
      el("span", { class: "value" }, entry.text));
    item.addEventListener("mouseenter", () => setHighlight(card, entry.key));
    item.addEventListener("mouseleave", () => setHighlight(card, null));
    legend.append(item);
  }
  if (!card.entries.length) legend.append(el("li", { class: "muted" }, "nothing found"));
}

function download(name, blob, label) {
  const link = el("a", { class: "button", download: name, href: URL.createObjectURL(blob) }, label);
  return link;
}

function buildDownloads(card, body, semantic) {
  const box = $(".downloads", card.node);
  box.replaceChildren();
  const stem = body.file_name.replace(/\.png$/, "");
  const json = (data) => new Blob([JSON.stringify(data, null, 2) + "\n"], { type: "application/json" });
  const plain = (segments) => segments.map(({ colour, ...rest }) => rest);
  if (semantic) {
    box.append(download(body.file_name, new Blob([base64Bytes(body.label_map)], { type: "image/png" }),
      "label PNG"));
  } else if (body.task === "panoptic") {
    box.append(download(body.file_name, new Blob([base64Bytes(body.segment_map)], { type: "image/png" }),
      "panoptic PNG"));
    box.append(download(`${stem}.json`, json({ file_name: body.file_name, segments_info: plain(body.segments) }),
      "segments JSON"));
  } else {
    box.append(download(`${stem}.json`, json(plain(body.segments)), "instances JSON"));
  }
  const overlay = el("a", { class: "button", href: "#", download: `${stem}_overlay.png` }, "overlay PNG");
  overlay.addEventListener("click", (event) => {
    if (overlay.dataset.ready) return;  // the second, synthetic click: let the browser save it
    event.preventDefault();
    $("canvas.overlay", card.node).toBlob((blob) => {
      overlay.href = URL.createObjectURL(blob);
      overlay.dataset.ready = "1";
      overlay.click();
      delete overlay.dataset.ready;
    });
  });
  box.append(overlay);
}

// ---- wiring ------------------------------------------------------------------------------------
function setup() {
  const input = $("#file-input");
  input.addEventListener("change", () => {
    addFiles(Array.from(input.files));
    input.value = "";  // choosing the same file again segments it again
  });
  const zone = $("#drop-zone");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    addFiles(Array.from(event.dataTransfer.files));
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") input.click();
  });
  const slider = $("#opacity");
  slider.addEventListener("input", () => {
    state.opacity = Number(slider.value);
    $("#opacity-value").textContent = state.opacity.toFixed(2);
    for (const card of state.cards) draw(card);
  });
  state.opacity = Number(slider.value);
  loadModel();
}

document.addEventListener("DOMContentLoaded", setup);
