// The page of `cgnet serve` (the entry ES module): uploads images and videos to the JSON API of
// the same server and shows the answers (server.js), or runs the model itself with
// onnxruntime-web from the exported ONNX file (browser.js), on uploaded images and the live camera
// (camera.js). Nothing here talks to any other host. The same page is the static site of
// `cgnet export --format web` (<html data-site="static">): then there is no server, only the
// in-browser mode.

import { byClass, newCard, page, params, showError, showImage } from "./common.js";
import { describeModel, segmentOnServer, videoTask } from "./server.js";
import { engine, segmentInBrowser } from "./browser.js";
import { cameraRunning, setupCamera, stopCamera } from "./camera.js";

const VIDEO_SUFFIXES = [".mp4", ".avi", ".mov", ".mkv", ".webm"];

// a card for an image file and the task that segments it where the page's mode says
function imageTask(file) {
  const card = newCard("image-card", "image-result", file);
  const mode = page.mode;
  card.dataset.mode = mode;
  return async () => {
    byClass(card, "status").textContent = mode === "browser" ? "segmenting in this browser…" : "segmenting…";
    try {
      const answer = mode === "browser" ? await segmentInBrowser(file) : await segmentOnServer(file);
      await showImage(card, file, answer);
    } catch (error) {
      showError(card, error.message);
    }
  };
}

// ---- the mode switch --------------------------------------------------------------------------

function setMode(mode) {
  page.mode = mode;
  document.body.dataset.mode = mode;
  document.getElementById("camera").hidden = mode !== "browser";
  document.getElementById("browser-status").hidden = mode !== "browser" || !page.engine;
  if (mode === "browser") {
    engine().catch(() => null);
  } else if (cameraRunning()) {
    stopCamera();
  }
}

function setupModes() {
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => radio.checked && setMode(radio.value));
  }
  setupCamera();
  let mode = params.get("mode") === "browser" ? "browser" : "server";
  if (page.isStatic) {
    document.getElementById("mode-switch").hidden = true;
    document.getElementById("limits").textContent = "images are segmented in this browser; nothing is uploaded";
    mode = "browser";
  }
  document.querySelector(`input[name="mode"][value="${mode}"]`).checked = true;
  setMode(mode);
}

// ---- input ------------------------------------------------------------------------------------

function isVideo(file) {
  const name = file.name.toLowerCase();
  return file.type.startsWith("video/") || VIDEO_SUFFIXES.some((suffix) => name.endsWith(suffix));
}

function refusedTask(file, message) {
  const card = newCard("image-card", "image-result", file);
  return async () => showError(card, message);
}

function addFiles(files) {
  for (const file of files) {
    let task;
    if (isVideo(file) && page.mode === "browser") {
      task = refusedTask(file, page.isStatic
        ? "this page segments images and the camera; videos need the server (cgnet serve or cgnet predict)"
        : "the in-browser mode segments images and the camera; switch to the server mode for videos");
    } else {
      task = isVideo(file) ? videoTask(file) : imageTask(file);
    }
    page.queue = page.queue.then(task, task);
  }
}

function setupInput() {
  const input = document.getElementById("file-input");
  input.addEventListener("change", () => {
    addFiles(Array.from(input.files));
    input.value = "";
  });
  const zone = document.getElementById("drop-zone");
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    addFiles(Array.from(event.dataTransfer.files));
  });
  // a file dropped beside the zone must not make the browser leave the page
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

setupInput();
describeModel();
setupModes();
