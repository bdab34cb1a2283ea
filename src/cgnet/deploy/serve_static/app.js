// The page of `cgnet serve`: uploads images and videos to the JSON API of the same server and
// shows the answers, or (the in-browser mode) runs the model itself with onnxruntime-web from the
// exported ONNX file, on uploaded images and the live camera. Nothing here talks to any other host.
// The same page is the static site of `cgnet export --format web` (<html data-site="static">):
// then there is no server, only the in-browser mode.
"use strict";

(() => {
  const VIDEO_SUFFIXES = [".mp4", ".avi", ".mov", ".mkv", ".webm"];
  const root = document.documentElement;
  const params = new URLSearchParams(location.search);
  const page = {
    info: null,
    mode: "server",
    isStatic: root.dataset.site === "static",
    webBase: root.dataset.webBase || "/web/",
    queue: Promise.resolve(), // files are sent one after the other, in the order given
    results: document.getElementById("results"),
  };

  function byClass(root, name) {
    return root.querySelector("." + name);
  }

  function fromTemplate(id) {
    return document.getElementById(id).content.firstElementChild.cloneNode(true);
  }

  function stemOf(name) {
    const dot = name.lastIndexOf(".");
    return (dot > 0 ? name.slice(0, dot) : name) || "image";
  }

  function blobUrl(base64, type) {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return URL.createObjectURL(new Blob([bytes], { type }));
  }

  function loadImage(url) {
    const image = new Image();
    image.src = url;
    return image.decode().then(() => image);
  }

  function sleep(ms) {
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

  async function request(url, options) {
    let response;
    try {
      response = await fetch(url, options);
    } catch (error) {
      throw new Error(`the server cannot be reached (${error.message}); is cgnet serve still running?`);
    }
    return readAnswer(response);
  }

  function postFile(url, field, file) {
    const limits = page.info && page.info.limits;
    if (limits && file.size > limits.max_upload_mb * 1048576) {
      return Promise.reject(new Error(
        `upload too large: ${(file.size / 1048576).toFixed(1)} MB, the limit is ${limits.max_upload_mb} MB (--max-upload-mb)`));
    }
    const form = new FormData();
    form.append(field, file, file.name);
    return request(url, { method: "POST", body: form });
  }

  function showError(card, message) {
    const error = byClass(card, "error");
    error.textContent = message;
    error.hidden = false;
    byClass(card, "status").hidden = true;
    card.classList.add("failed");
  }

  // ---- images -------------------------------------------------------------------------------

  function fillLegend(table, legend) {
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

  async function showImage(card, file, answer) {
    const stem = stemOf(file.name);
    const width = answer.width;
    const height = answer.height;
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

    const canvas = byClass(card, "overlay");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d");
    const slider = byClass(card, "opacity");
    const shown = byClass(card, "opacity-value");
    const overlayLink = byClass(card, "download-overlay");
    let serverOverlay = null;
    if (!original) {
      serverOverlay = await loadImage(blobUrl(answer.overlay_png, "image/png"));
      slider.value = Math.round(answer.alpha * 100);
      slider.disabled = true;
      byClass(card, "original").alt = "this browser cannot show the uploaded file";
    }

    function draw() {
      const alpha = Number(slider.value) / 100;
      shown.textContent = `${slider.value}%`;
      context.globalAlpha = 1;
      if (serverOverlay) {
        context.drawImage(serverOverlay, 0, 0, width, height);
        return;
      }
      // (1 - alpha) * image + alpha * colours, as cgnet predict's overlays
      context.drawImage(original, 0, 0, width, height);
      context.globalAlpha = alpha;
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
    overlayLink.download = `${stem}_overlay.png`;

    const maskLink = byClass(card, "download-mask");
    maskLink.href = answer.mask_url || blobUrl(answer.mask_png, "image/png");
    maskLink.download = `${stem}_mask.png`;
    const colorLink = byClass(card, "download-color");
    colorLink.href = colorUrl;
    colorLink.download = `${stem}_color.png`;

    byClass(card, "latency").textContent =
      `model latency ${answer.latency_ms.toFixed(1)} ms on ${answer.backend} (${answer.precision}), ` +
      `${width}\u00d7${height} pixels`;
    fillLegend(byClass(card, "legend"), answer.legend);
    byClass(card, "status").hidden = true;
    byClass(card, "body").hidden = false;
    card.classList.add("done");
  }

  // a result card for one dropped file, at the top of the results
  function newCard(template, kind, file) {
    const card = fromTemplate(template);
    card.classList.add(kind);
    byClass(card, "title").textContent = file.name;
    byClass(card, "status").textContent = "waiting…";
    page.results.prepend(card);
    return card;
  }

  function imageTask(file) {
    const card = newCard("image-card", "image-result", file);
    const mode = page.mode;
    card.dataset.mode = mode;
    return async () => {
      byClass(card, "status").textContent = mode === "browser" ? "segmenting in this browser…" : "segmenting…";
      try {
        const answer = mode === "browser" ? await segmentInBrowser(file) : await postFile("/api/segment", "image", file);
        await showImage(card, file, answer);
      } catch (error) {
        showError(card, error.message);
      }
    };
  }

  // ---- videos -------------------------------------------------------------------------------

  async function followJob(card, job) {
    const status = byClass(card, "status");
    const bar = byClass(card, "progress");
    for (;;) {
      if (job.state === "error") throw new Error(job.error);
      if (job.total > 0) {
        bar.value = job.progress;
      } else {
        bar.removeAttribute("value"); // length unknown: an indeterminate bar
      }
      const frames = job.total > 0 ? `frame ${job.frames} of ${job.total}` : `frame ${job.frames}`;
      const speed = job.latency_ms ? `, ${job.latency_ms.toFixed(1)} ms per frame` : "";
      status.textContent = {
        queued: "waiting for the model…",
        running: `segmenting: ${frames}${speed}`,
        encoding: "writing the video…",
        done: `done: ${job.total} frames${speed}`,
      }[job.state] || job.state;
      if (job.state === "done") return job;
      await sleep(400);
      job = await request(`/api/jobs/${encodeURIComponent(job.id)}`);
    }
  }

  function videoTask(file) {
    const card = newCard("video-card", "video-result", file);
    return async () => {
      byClass(card, "status").textContent = "uploading…";
      try {
        const job = await followJob(card, await postFile("/api/video", "video", file));
        byClass(card, "progress").value = 1;
        const video = byClass(card, "result-video");
        video.src = job.preview_url;
        const link = byClass(card, "download-video");
        link.href = job.video_url;
        link.download = `${stemOf(file.name)}_overlay.mp4`;
        byClass(card, "body").hidden = false;
        card.classList.add("done");
      } catch (error) {
        byClass(card, "progress").hidden = true;
        showError(card, error.message);
      }
    };
  }

  // ---- the in-browser mode: onnxruntime-web -------------------------------------------------

  // a module with one function returning a v128 constant: valid only where WebAssembly SIMD is
  const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 22, 1, 20, 0,
    253, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 11]);
  const MAX_BROWSER_PIXELS = 40e6;
  const hooks = { lastMask: null, camera: null }; // read by the tests (and handy in the console)
  window.cgnet = hooks;

  function loadScript(url) {
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = url;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`cannot load ${url}`));
      document.head.append(script);
    });
  }

  // Float32 inputs exactly as cgnet.preprocess.to_tensor makes them: every step rounded to float32
  // as torch computes it, (value * value_scale - mean) / std per channel, in the spec's channel order
  function inputTables(spec) {
    const f = Math.fround;
    const scale = f(spec.value_scale);
    return [0, 1, 2].map((c) => {
      const table = new Float32Array(256);
      const mean = f(spec.mean[c]);
      const std = f(spec.std[c]);
      for (let v = 0; v < 256; v++) table[v] = f(f(f(v * scale) - mean) / std);
      return table;
    });
  }

  function makeEngine(ort, session, meta, label) {
    const spec = meta.preprocess;
    const tables = inputTables(spec);
    const source = spec.channel_order === "BGR" ? [2, 1, 0] : [0, 1, 2]; // RGBA index of each input channel
    const inputName = session.inputNames[0];
    const outputName = session.outputNames[0];
    let busy = Promise.resolve();

    async function run(rgba, width, height) {
      const start = performance.now();
      const count = width * height;
      const input = new Float32Array(3 * count);
      for (let c = 0; c < 3; c++) {
        const table = tables[c];
        const offset = c * count;
        const from = source[c];
        for (let i = 0; i < count; i++) input[offset + i] = table[rgba[4 * i + from]];
      }
      const outputs = await session.run({ [inputName]: new ort.Tensor("float32", input, [1, 3, height, width]) });
      const logits = outputs[outputName];
      const data = logits.data;
      const classes = logits.dims[1];
      const mask = new Uint8Array(count);
      for (let i = 0; i < count; i++) {
        let best = data[i];
        let id = 0;
        for (let k = 1; k < classes; k++) {
          const value = data[k * count + i];
          if (value > best) { // the first largest wins, as numpy's argmax
            best = value;
            id = k;
          }
        }
        mask[i] = id;
      }
      if (logits.dispose) logits.dispose();
      return { mask, ms: performance.now() - start };
    }

    return {
      meta, label,
      // one run at a time: the camera and uploads share the session
      segment(rgba, width, height) {
        const result = busy.then(() => run(rgba, width, height));
        busy = result.catch(() => null);
        return result;
      },
    };
  }

  async function startEngine() {
    if (typeof WebAssembly !== "object") {
      throw new Error("this browser has no WebAssembly, which the in-browser mode needs; use the server mode");
    }
    if (!WebAssembly.validate(SIMD_PROBE)) {
      throw new Error("this browser lacks WebAssembly SIMD, which the in-browser mode needs (a browser from " +
                      "2021 on has it); use the server mode");
    }
    const meta = await request(page.webBase + "model.json");
    let adapter = null;
    if (params.get("ep") !== "wasm" && navigator.gpu) {
      try {
        adapter = await navigator.gpu.requestAdapter();
      } catch (error) {
        adapter = null;
      }
    }
    const ortBase = new URL(page.webBase + "ort/", location.href).href;
    await loadScript(ortBase + (adapter ? "ort.webgpu.min.js" : "ort.wasm.min.js"));
    const ort = window.ort;
    const isolated = window.crossOriginIsolated === true;
    ort.env.wasm.wasmPaths = ortBase;
    ort.env.wasm.numThreads = isolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
    const providers = adapter ? ["webgpu", "wasm"] : ["wasm"];
    let session;
    try {
      session = await ort.InferenceSession.create(page.webBase + "model.onnx", { executionProviders: providers });
    } catch (error) {
      throw new Error(`onnxruntime-web could not load the model: ${error.message || error}`);
    }
    const threads = ort.env.wasm.numThreads;
    const label = adapter ? "onnxruntime-web, WebGPU"
      : `onnxruntime-web, WebAssembly, ${threads} thread${threads > 1 ? "s" : ""}`;
    return makeEngine(ort, session, meta, label);
  }

  function engine() {
    if (!page.engine) {
      const status = document.getElementById("browser-status");
      status.hidden = false;
      status.textContent = "loading the model and onnxruntime-web into this browser…";
      page.engine = startEngine();
      page.engine.then((ready) => {
        const meta = ready.meta;
        const notes = [];
        if (window.crossOriginIsolated !== true) {
          notes.push("one thread only: the page is not cross-origin isolated (its host must send the headers " +
                     "Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp)");
        }
        status.textContent = `model ${meta.model} (${meta.classes.length} classes) runs in this browser: ` +
          `${ready.label} (version ${meta.runtime.version})` + (notes.length ? `. ${notes.join("; ")}` : "");
        if (page.isStatic) {
          document.getElementById("model-info").textContent = `model ${meta.model} (${meta.classes.length} classes)`;
        }
        document.body.dataset.browser = "ready";
      }, (error) => {
        status.hidden = true;
        const shown = document.getElementById("browser-error");
        const prefix = "in-browser mode unavailable: "; // the server's refusals already start with it
        shown.textContent = error.message.startsWith(prefix) ? error.message : prefix + error.message;
        shown.hidden = false;
        document.body.dataset.browser = "failed";
      });
    }
    return page.engine;
  }

  function colorsOf(mask, palette) {
    const rgba = new Uint8ClampedArray(mask.length * 4);
    for (let i = 0; i < mask.length; i++) {
      const color = palette[mask[i]] || [0, 0, 0];
      rgba[4 * i] = color[0];
      rgba[4 * i + 1] = color[1];
      rgba[4 * i + 2] = color[2];
      rgba[4 * i + 3] = 255;
    }
    return rgba;
  }

  function legendOf(mask, meta) {
    const counts = new Float64Array(256);
    for (let i = 0; i < mask.length; i++) counts[mask[i]] += 1;
    const total = Math.max(1, mask.length);
    const legend = [];
    for (let id = 0; id < 256; id++) {
      if (id >= meta.classes.length && counts[id] === 0) continue;
      legend.push({ id, name: id < meta.classes.length ? meta.classes[id] : `id ${id}`,
                    color: meta.palette[id] || [0, 0, 0], share: counts[id] / total });
    }
    return legend;
  }

  // an 8-bit grayscale PNG of the class ids (what cgnet predict writes), encoded here
  const CRC_TABLE = (() => {
    const table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
    return table;
  })();

  function pngChunk(type, data) {
    const out = new Uint8Array(12 + data.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, data.length);
    for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
    out.set(data, 8);
    let crc = 0xffffffff;
    for (let i = 4; i < 8 + data.length; i++) crc = CRC_TABLE[(crc ^ out[i]) & 255] ^ (crc >>> 8);
    view.setUint32(8 + data.length, (crc ^ 0xffffffff) >>> 0);
    return out;
  }

  async function grayPng(pixels, width, height) {
    const rows = new Uint8Array((width + 1) * height); // each row: filter type 0, then its pixels
    for (let y = 0; y < height; y++) rows.set(pixels.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
    const zlib = new Uint8Array(await new Response(
      new Blob([rows]).stream().pipeThrough(new CompressionStream("deflate"))).arrayBuffer());
    const header = new Uint8Array(13);
    const view = new DataView(header.buffer);
    view.setUint32(0, width);
    view.setUint32(4, height);
    header[8] = 8; // bit depth; colour type 0 (grayscale), no interlace
    const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
    return new Blob([signature, pngChunk("IHDR", header), pngChunk("IDAT", zlib), pngChunk("IEND", new Uint8Array(0))],
                    { type: "image/png" });
  }

  function toBase64(bytes) {
    let text = "";
    for (let i = 0; i < bytes.length; i += 32768) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 32768));
    return btoa(text);
  }

  function canvasBlob(canvas) {
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }

  // the answer /api/segment would give, computed in this browser
  async function segmentInBrowser(file) {
    const ready = await engine();
    let bitmap;
    try {
      bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    } catch (error) {
      throw new Error("this browser cannot decode this file (not an image, corrupt, or a format such as TIFF " +
                      "that browsers do not read); the server mode reads more formats");
    }
    const width = bitmap.width;
    const height = bitmap.height;
    if (width * height > MAX_BROWSER_PIXELS) {
      throw new Error(`image too large: ${width}x${height} is ${(width * height / 1e6).toFixed(1)} megapixels, ` +
                      `this page takes up to ${MAX_BROWSER_PIXELS / 1e6}`);
    }
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    bitmap.close();
    const rgba = context.getImageData(0, 0, width, height).data;
    const { mask, ms } = await ready.segment(rgba, width, height);
    context.putImageData(new ImageData(colorsOf(mask, ready.meta.palette), width, height), 0, 0);
    const colorBlob = await canvasBlob(canvas);
    const maskBlob = await grayPng(mask, width, height);
    hooks.lastMask = { width, height, ids: toBase64(mask), name: file.name,
                       png: toBase64(new Uint8Array(await maskBlob.arrayBuffer())) }; // the mask download's bytes
    return { width, height, latency_ms: ms, backend: ready.label, precision: ready.meta.precision || "fp32",
             color_url: URL.createObjectURL(colorBlob), mask_url: URL.createObjectURL(maskBlob),
             alpha: 0.5, legend: legendOf(mask, ready.meta) };
  }

  // ---- the camera (in-browser mode) ---------------------------------------------------------

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
      const longest = Number(document.getElementById("camera-size").value);
      const scale = Math.min(1, longest / Math.max(video.videoWidth, video.videoHeight));
      const width = Math.max(1, Math.round(video.videoWidth * scale));
      const height = Math.max(1, Math.round(video.videoHeight * scale));
      grab.width = width;
      grab.height = height;
      context.drawImage(video, 0, 0, width, height);
      const frame = context.getImageData(0, 0, width, height).data;
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

  function stopCamera() {
    camera.running = false;
    if (camera.stream) camera.stream.getTracks().forEach((track) => track.stop());
    camera.stream = null;
    document.getElementById("camera-start").disabled = false;
    document.getElementById("camera-stop").disabled = true;
  }

  async function saveCameraMask() {
    if (!camera.last) return;
    const { mask, width, height } = camera.last;
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await grayPng(mask, width, height));
    link.download = "camera_mask.png";
    link.click();
  }

  // ---- the mode switch ----------------------------------------------------------------------

  function setMode(mode) {
    page.mode = mode;
    document.body.dataset.mode = mode;
    document.getElementById("camera").hidden = mode !== "browser";
    document.getElementById("browser-status").hidden = mode !== "browser" || !page.engine;
    if (mode === "browser") {
      engine().catch(() => null);
    } else if (camera.running) {
      stopCamera();
    }
  }

  function setupModes() {
    for (const radio of document.querySelectorAll('input[name="mode"]')) {
      radio.addEventListener("change", () => radio.checked && setMode(radio.value));
    }
    document.getElementById("camera-start").addEventListener("click", startCamera);
    document.getElementById("camera-stop").addEventListener("click", stopCamera);
    document.getElementById("camera-save").addEventListener("click", saveCameraMask);
    let mode = params.get("mode") === "browser" ? "browser" : "server";
    if (page.isStatic) {
      document.getElementById("mode-switch").hidden = true;
      document.getElementById("limits").textContent = "images are segmented in this browser; nothing is uploaded";
      mode = "browser";
    }
    document.querySelector(`input[name="mode"][value="${mode}"]`).checked = true;
    setMode(mode);
  }

  // ---- input --------------------------------------------------------------------------------

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

  async function describeModel() {
    const text = document.getElementById("model-info");
    if (page.isStatic) {
      text.textContent = "the model runs in this browser";
      return;
    }
    try {
      page.info = await request("/api/info");
    } catch (error) {
      text.textContent = error.message;
      return;
    }
    const info = page.info;
    text.textContent = `model ${info.model} (${info.classes.length} classes) on ${info.backend}, ${info.precision}`;
    const limits = info.limits;
    document.getElementById("limits").textContent =
      `up to ${limits.max_upload_mb} MB per file, ${limits.max_megapixels} megapixels per image or frame, ` +
      `${limits.max_video_frames} frames per video`;
    document.body.dataset.ready = "true";
  }

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
  describeModel();
  setupModes();
})();
