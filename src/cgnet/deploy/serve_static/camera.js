// The live camera of the in-browser mode (an ES module): frames from getUserMedia, segmented in
// this browser, drawn as an overlay and a colour mask with the classes present and the frame rate.

import { fillLegend, hooks, sleep } from "./common.js";
import { colorsOf, engine, grayPng, legendOf } from "./browser.js";

const camera = { stream: null, running: false, last: null };

function cameraError(message) {
  const shown = document.getElementById("camera-error");
  shown.textContent = message;
  shown.hidden = !message;
}

function drawCamera(frame, mask, width, height, palette) {
  const alpha = Number(document.getElementById("camera-opacity").value) / 100;
  const colors = colorsOf(mask, palette);
  const blended = new Uint8ClampedArray(colors.length);
  for (let i = 0; i < colors.length; i += 4) { // (1 - alpha) * frame + alpha * colours, as cgnet's overlays
    blended[i] = (1 - alpha) * frame[i] + alpha * colors[i];
    blended[i + 1] = (1 - alpha) * frame[i + 1] + alpha * colors[i + 1];
    blended[i + 2] = (1 - alpha) * frame[i + 2] + alpha * colors[i + 2];
    blended[i + 3] = 255;
  }
  for (const [id, pixels] of [["camera-overlay", blended], ["camera-color", colors]]) {
    const canvas = document.getElementById(id);
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    canvas.getContext("2d").putImageData(new ImageData(pixels, width, height), 0, 0);
  }
}

// the video's current frame, scaled to the chosen longest side, as RGBA
function grabFrame(video, grab, context) {
  const longest = Number(document.getElementById("camera-size").value);
  const scale = Math.min(1, longest / Math.max(video.videoWidth, video.videoHeight));
  const width = Math.max(1, Math.round(video.videoWidth * scale));
  const height = Math.max(1, Math.round(video.videoHeight * scale));
  grab.width = width;
  grab.height = height;
  context.drawImage(video, 0, 0, width, height);
  return { frame: context.getImageData(0, 0, width, height).data, width, height };
}

async function cameraLoop(ready) {
  const video = document.getElementById("camera-video");
  const grab = document.createElement("canvas");
  const context = grab.getContext("2d", { willReadFrequently: true });
  const shown = document.getElementById("camera-fps");
  const stamps = [];
  let frames = 0;
  while (camera.running) {
    if (!video.videoWidth) {
      await sleep(30);
      continue;
    }
    const { frame, width, height } = grabFrame(video, grab, context);
    const { mask, ms } = await ready.segment(frame, width, height);
    if (!camera.running) break;
    drawCamera(frame, mask, width, height, ready.meta.palette);
    camera.last = { mask, width, height };
    frames += 1;
    stamps.push(performance.now());
    if (stamps.length > 30) stamps.shift();
    const fps = stamps.length > 1 ? (stamps.length - 1) * 1000 / (stamps[stamps.length - 1] - stamps[0]) : 0;
    shown.textContent = `${fps.toFixed(1)} frames per second (model ${ms.toFixed(0)} ms per ` +
                        `${width}\u00d7${height} frame, ${ready.label})`;
    hooks.camera = { frames, fps, width, height, ms };
    if (frames % 10 === 1) fillLegend(document.getElementById("camera-legend"), legendOf(mask, ready.meta));
    await sleep(0); // let the page breathe between frames
  }
}

async function startCamera() {
  cameraError("");
  if (!window.isSecureContext) {
    cameraError("the camera needs a secure page: open this page over HTTPS (cgnet serve --certfile/--keyfile) " +
                "or on localhost");
    return;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    cameraError("this browser gives pages no camera (getUserMedia)");
    return;
  }
  const start = document.getElementById("camera-start");
  start.disabled = true;
  try {
    const ready = await engine();
    camera.stream = await navigator.mediaDevices.getUserMedia(
      { video: { facingMode: "environment", width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    const video = document.getElementById("camera-video");
    video.srcObject = camera.stream;
    await video.play();
    camera.running = true;
    document.getElementById("camera-stop").disabled = false;
    document.getElementById("camera-save").disabled = false;
    cameraLoop(ready).catch((error) => {
      cameraError(`the camera stopped: ${error.message || error}`);
      stopCamera();
    });
  } catch (error) {
    start.disabled = false;
    cameraError(error.name === "NotAllowedError" ? "the camera was not allowed (see the browser's site settings)"
      : error.name === "NotFoundError" ? "no camera found" : `cannot start the camera: ${error.message || error}`);
  }
}

export function stopCamera() {
  camera.running = false;
  if (camera.stream) camera.stream.getTracks().forEach((track) => track.stop());
  camera.stream = null;
  document.getElementById("camera-start").disabled = false;
  document.getElementById("camera-stop").disabled = true;
}

export function cameraRunning() {
  return camera.running;
}

async function saveCameraMask() {
  if (!camera.last) return;
  const { mask, width, height } = camera.last;
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await grayPng(mask, width, height));
  link.download = "camera_mask.png";
  link.click();
}

// the camera card's buttons
export function setupCamera() {
  document.getElementById("camera-start").addEventListener("click", startCamera);
  document.getElementById("camera-stop").addEventListener("click", stopCamera);
  document.getElementById("camera-save").addEventListener("click", saveCameraMask);
}
