// The page of `cgnet serve`: uploads images and videos to the JSON API of the same server and
// shows the answers. Nothing here talks to any other host.
"use strict";

(() => {
  const VIDEO_SUFFIXES = [".mp4", ".avi", ".mov", ".mkv", ".webm"];
  const page = {
    info: null,
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
    const colorUrl = blobUrl(answer.color_png, "image/png");
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
    maskLink.href = blobUrl(answer.mask_png, "image/png");
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
    return async () => {
      byClass(card, "status").textContent = "segmenting…";
      try {
        await showImage(card, file, await postFile("/api/segment", "image", file));
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

  // ---- input --------------------------------------------------------------------------------

  function isVideo(file) {
    const name = file.name.toLowerCase();
    return file.type.startsWith("video/") || VIDEO_SUFFIXES.some((suffix) => name.endsWith(suffix));
  }

  function addFiles(files) {
    for (const file of files) {
      const task = isVideo(file) ? videoTask(file) : imageTask(file);
      page.queue = page.queue.then(task, task);
    }
  }

  async function describeModel() {
    const text = document.getElementById("model-info");
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
})();
