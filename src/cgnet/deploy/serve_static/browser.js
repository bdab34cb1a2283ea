// The in-browser mode (an ES module): the model runs in this browser with onnxruntime-web
// (WebAssembly; WebGPU where the browser has it) from the exported ONNX file, which the page's
// own server (/web/) or the static folder holds. Nothing is uploaded.

import { hooks, page, params, request } from "./common.js";

// a module with one function returning a v128 constant: valid only where WebAssembly SIMD is
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 22, 1, 20, 0,
  253, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 11]);
const MAX_BROWSER_PIXELS = 40e6;

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

// class ids (the first largest logit wins, as numpy's argmax) of 1 x classes x H x W logits
function argmax(logits, count) {
  const data = logits.data;
  const classes = logits.dims[1];
  const mask = new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    let best = data[i];
    let id = 0;
    for (let k = 1; k < classes; k++) {
      const value = data[k * count + i];
      if (value > best) {
        best = value;
        id = k;
      }
    }
    mask[i] = id;
  }
  return mask;
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
    const mask = argmax(logits, count);
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

function showEngine(ready) {
  const meta = ready.meta;
  const notes = [];
  if (window.crossOriginIsolated !== true) {
    notes.push("one thread only: the page is not cross-origin isolated (its host must send the headers " +
               "Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp)");
  }
  document.getElementById("browser-status").textContent =
    `model ${meta.model} (${meta.classes.length} classes) runs in this browser: ` +
    `${ready.label} (version ${meta.runtime.version})` + (notes.length ? `. ${notes.join("; ")}` : "");
  if (page.isStatic) {
    document.getElementById("model-info").textContent = `model ${meta.model} (${meta.classes.length} classes)`;
  }
  document.body.dataset.browser = "ready";
}

function showEngineError(error) {
  document.getElementById("browser-status").hidden = true;
  const shown = document.getElementById("browser-error");
  const prefix = "in-browser mode unavailable: "; // the server's refusals already start with it
  shown.textContent = error.message.startsWith(prefix) ? error.message : prefix + error.message;
  shown.hidden = false;
  document.body.dataset.browser = "failed";
}

// the model in this browser, loaded on first use (a promise, shared)
export function engine() {
  if (!page.engine) {
    const status = document.getElementById("browser-status");
    status.hidden = false;
    status.textContent = "loading the model and onnxruntime-web into this browser…";
    page.engine = startEngine();
    page.engine.then(showEngine, showEngineError);
  }
  return page.engine;
}

export function colorsOf(mask, palette) {
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

export function legendOf(mask, meta) {
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

// ---- an 8-bit grayscale PNG of the class ids (what cgnet predict writes), encoded here ---------

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

export async function grayPng(pixels, width, height) {
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

// the pixels of an image file as decoded by this browser (RGBA), on a canvas of its size
async function decodeInBrowser(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch (error) {
    throw new Error("this browser cannot decode this file (not an image, corrupt, or a format such as TIFF " +
                    "that browsers do not read); the server mode reads more formats");
  }
  const { width, height } = bitmap;
  if (width * height > MAX_BROWSER_PIXELS) {
    bitmap.close();
    throw new Error(`image too large: ${width}x${height} is ${(width * height / 1e6).toFixed(1)} megapixels, ` +
                    `this page takes up to ${MAX_BROWSER_PIXELS / 1e6}`);
  }
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  return { canvas, context, width, height, rgba: context.getImageData(0, 0, width, height).data };
}

// the answer /api/segment would give, computed in this browser
export async function segmentInBrowser(file) {
  const ready = await engine();
  const { canvas, context, width, height, rgba } = await decodeInBrowser(file);
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
