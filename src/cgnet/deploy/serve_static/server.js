// The server mode (an ES module): images and videos are sent to the JSON API of the server that
// served the page (/api/segment, /api/video, /api/jobs/<id>), and its answers shown.

import { byClass, newCard, page, request, showError, sleep, stemOf } from "./common.js";

export function postFile(url, field, file) {
  const limits = page.info && page.info.limits;
  if (limits && file.size > limits.max_upload_mb * 1048576) {
    return Promise.reject(new Error(
      `upload too large: ${(file.size / 1048576).toFixed(1)} MB, the limit is ${limits.max_upload_mb} MB (--max-upload-mb)`));
  }
  const form = new FormData();
  form.append(field, file, file.name);
  return request(url, { method: "POST", body: form });
}

// the answer of /api/segment for one image file
export function segmentOnServer(file) {
  return postFile("/api/segment", "image", file);
}

// ---- videos -----------------------------------------------------------------------------------

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

// a card for a video file and the task that uploads it and follows its job
export function videoTask(file) {
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

// the model, backend and limits from /api/info, shown at the top; marks the page ready
export async function describeModel() {
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
