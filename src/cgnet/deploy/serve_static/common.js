// Shared by every part of the page (an ES module): the page's state, small DOM helpers, requests
// to the server that served the page, and the result card that shows one segmented image.
// Nothing here talks to any other host.

const root = document.documentElement;

export const params = new URLSearchParams(location.search);

export const page = {
  info: null, // /api/info, once read (server mode)
  mode: "server",
  isStatic: root.dataset.site === "static", // the static folder of `cgnet export --format web`: no server
  webBase: root.dataset.webBase || "/web/",
  queue: Promise.resolve(), // files are handled one after the other, in the order given
  results: document.getElementById("results"),
};

export const hooks = { lastMask: null, camera: null }; // read by the tests (and handy in the console)
window.cgnet = hooks;

export function byClass(parent, name) {
  return parent.querySelector("." + name);
}

export function fromTemplate(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}

export function stemOf(name) {
  const dot = name.lastIndexOf(".");
  return (dot > 0 ? name.slice(0, dot) : name) || "image";
}

export function blobUrl(base64, type) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return URL.createObjectURL(new Blob([bytes], { type }));
}

export function loadImage(url) {
  const image = new Image();
  image.src = url;
  return image.decode().then(() => image);
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function readAnswer(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error ? body.error : `the server answered ${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

// the JSON answer of this page's server, or an Error with the server's message
export async function request(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    throw new Error(`the server cannot be reached (${error.message}); is cgnet serve still running?`);
  }
  return readAnswer(response);
}

// ---- result cards -----------------------------------------------------------------------------

// a result card for one dropped file, at the top of the results
export function newCard(template, kind, file) {
  const card = fromTemplate(template);
  card.classList.add(kind);
  byClass(card, "title").textContent = file.name;
  byClass(card, "status").textContent = "waiting…";
  page.results.prepend(card);
  return card;
}

export function showError(card, message) {
  const error = byClass(card, "error");
  error.textContent = message;
  error.hidden = false;
  byClass(card, "status").hidden = true;
  card.classList.add("failed");
}

export function fillLegend(table, legend) {
  const body = table.tBodies[0];
  body.replaceChildren();
  const present = legend.filter((entry) => entry.share > 0).sort((a, b) => b.share - a.share);
  for (const entry of present) {
    const row = body.insertRow();
    row.className = "legend-row";
    row.dataset.classId = entry.id;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.backgroundColor = `rgb(${entry.color.join(",")})`;
    row.insertCell().append(swatch);
    row.insertCell().textContent = entry.name;
    const percent = entry.share * 100;
    row.insertCell().textContent = percent < 0.1 ? "<0.1%" : `${percent.toFixed(1)}%`;
  }
}

// the overlay canvas: (1 - alpha) * image + alpha * colours as cgnet predict's overlays, redrawn
// when the slider moves; the server's own overlay when this browser cannot show the upload
function drawOverlay(card, answer, original, colorImage, serverOverlay) {
  const { width, height } = answer;
  const canvas = byClass(card, "overlay");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const slider = byClass(card, "opacity");
  const shown = byClass(card, "opacity-value");
  const overlayLink = byClass(card, "download-overlay");
  if (serverOverlay) {
    slider.value = Math.round(answer.alpha * 100);
    slider.disabled = true;
    byClass(card, "original").alt = "this browser cannot show the uploaded file";
  }

  function draw() {
    shown.textContent = `${slider.value}%`;
    context.globalAlpha = 1;
    if (serverOverlay) {
      context.drawImage(serverOverlay, 0, 0, width, height);
      return;
    }
    context.drawImage(original, 0, 0, width, height);
    context.globalAlpha = Number(slider.value) / 100;
    context.drawImage(colorImage, 0, 0, width, height);
    context.globalAlpha = 1;
  }

  function refreshOverlayLink() {
    canvas.toBlob((blob) => {
      if (!blob) return;
      if (overlayLink.href.startsWith("blob:")) URL.revokeObjectURL(overlayLink.href);
      overlayLink.href = URL.createObjectURL(blob);
    }, "image/png");
  }

  slider.addEventListener("input", draw);
  slider.addEventListener("change", refreshOverlayLink);
  draw();
  refreshOverlayLink();
}

// fill an image card from an answer of /api/segment (or the in-browser mode's answer of the same shape)
export async function showImage(card, file, answer) {
  const stem = stemOf(file.name);
  const colorUrl = answer.color_url || blobUrl(answer.color_png, "image/png");
  const colorImage = await loadImage(colorUrl);
  byClass(card, "color").src = colorUrl;

  let original = null;
  const originalUrl = answer.image_jpeg ? blobUrl(answer.image_jpeg, "image/jpeg") : URL.createObjectURL(file);
  try {
    original = await loadImage(originalUrl);
    byClass(card, "original").src = originalUrl;
  } catch (error) {
    original = null; // a format this browser cannot show: the server's overlay stands in
  }
  const serverOverlay = original ? null : await loadImage(blobUrl(answer.overlay_png, "image/png"));
  drawOverlay(card, answer, original, colorImage, serverOverlay);
  byClass(card, "download-overlay").download = `${stem}_overlay.png`;

  const maskLink = byClass(card, "download-mask");
  maskLink.href = answer.mask_url || blobUrl(answer.mask_png, "image/png");
  maskLink.download = `${stem}_mask.png`;
  const colorLink = byClass(card, "download-color");
  colorLink.href = colorUrl;
  colorLink.download = `${stem}_color.png`;

  byClass(card, "latency").textContent =
    `model latency ${answer.latency_ms.toFixed(1)} ms on ${answer.backend} (${answer.precision}), ` +
    `${answer.width}\u00d7${answer.height} pixels`;
  fillLegend(byClass(card, "legend"), answer.legend);
  byClass(card, "status").hidden = true;
  byClass(card, "body").hidden = false;
  card.classList.add("done");
}
