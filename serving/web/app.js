// The faces page: plain JavaScript over the gateway's REST API (no build step, no library).
// Photo  -> POST /v1/faces:analyze?explain=1   boxes, emotions, the seven probabilities, heatmaps
// Video  -> POST /v1/videos:analyze            a timeline per person; annotated video, CSV, JSON
// Webcam -> POST /v1/faces:analyze per frame   downscaled JPEG frames, up to two in flight
// "that's wrong: it is ..." -> POST /v1/feedback;  the model panel <- GET /v1/panel
// Label  -> GET /v1/labelling/next, POST /v1/labelling/answer (keys 1-7, 0 not a face, s skip)
"use strict";

const EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"];
const COLOURS = {
  angry: "#d94841", disgust: "#6a994e", fear: "#8e6cc4", happy: "#f2b705",
  sad: "#3b82c4", surprise: "#e87d2f", neutral: "#8a94a6",
};
// One id per page: the traffic split is sticky per client (x-client-id), so a person's photos,
// frames and corrections all go to the same side of a canary.
const CLIENT_ID = "page-" + Math.random().toString(36).slice(2, 10);
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- errors and requests

function showError(message) {
  const banner = $("error");
  banner.textContent = message;
  banner.hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

// Every answer that is not 2xx becomes a readable message: the gateway's {"error": ...} text,
// or the HTTP status when there is none. Never a stack trace.
async function request(path, options = {}) {
  const headers = { "x-client-id": CLIENT_ID, ...(options.headers || {}) };
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (error) {
    throw new Error("the gateway cannot be reached (" + error.message + ")");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && body.error) message = body.error;
    } catch (_) { /* not JSON: keep the status line */ }
    if (response.status === 413) message = "too large: " + message;
    throw new Error(message);
  }
  return response;
}

async function analyzeImage(blob, query = "") {
  const response = await request("/v1/faces:analyze" + query, {
    method: "POST",
    body: blob,
    headers: { "Content-Type": blob.type || "application/octet-stream" },
  });
  return response.json();
}

// ---------------------------------------------------------------- tabs

function showTab(name) {
  for (const button of document.querySelectorAll("nav button")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === name));
  }
  for (const tab of document.querySelectorAll(".tab")) tab.hidden = tab.id !== "tab-" + name;
}

// ---------------------------------------------------------------- photo

function label(face, index) {
  const person = face.person !== undefined ? `#${face.person} ` : `${index + 1}. `;
  return `${person}${face.emotion} ${face.confidence.toFixed(2)}${face.uncertain ? "?" : ""}`;
}

function drawBoxes(stage, result) {
  for (const old of stage.querySelectorAll(".box")) old.remove();
  result.faces.forEach((face, index) => {
    const b = face.box;
    const box = document.createElement("div");
    box.className = "box" + (face.uncertain ? " uncertain" : "");
    box.dataset.face = String(index);
    Object.assign(box.style, {
      left: (100 * b.x) / result.width + "%",
      top: (100 * b.y) / result.height + "%",
      width: (100 * b.width) / result.width + "%",
      height: (100 * b.height) / result.height + "%",
      borderColor: COLOURS[face.emotion],
    });
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.style.background = COLOURS[face.emotion];
    tag.textContent = label(face, index);
    box.append(tag);
    if (face.heatmap) {
      const heat = document.createElement("img");
      heat.className = "heat";
      heat.alt = "where the evidence for " + face.emotion + " lies";
      heat.src = "data:image/png;base64," + face.heatmap;
      heat.hidden = true;
      box.append(heat);
    }
    stage.append(box);
  });
}

function bars(container, probabilities) {
  container.replaceChildren();
  for (const emotion of EMOTIONS) {
    const p = probabilities[emotion];
    const name = document.createElement("span");
    name.textContent = emotion;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = (100 * p).toFixed(1) + "%";
    bar.style.background = COLOURS[emotion];
    const value = document.createElement("span");
    value.textContent = (100 * p).toFixed(1) + "%";
    container.append(name, bar, value);
  }
}

// Which version read the faces (with a canary live, a photo may go to either): "read by v2 (canary)".
function readBy(model) {
  if (!model || model.version === null || model.version === undefined) return "";
  return `read by v${model.version}` + (model.label ? ` (${model.label})` : "");
}

function faceCards(container, stage, result) {
  container.replaceChildren();
  result.faces.forEach((face, index) => {
    const card = $("face-card").content.firstElementChild.cloneNode(true);
    card.dataset.face = String(index);
    card.querySelector(".face-title").textContent = label(face, index);
    card.querySelector(".uncertain").hidden = !face.uncertain;
    card.querySelector(".face-model").textContent = readBy(result.model);
    bars(card.querySelector(".bars"), face.probabilities);
    const truth = card.querySelector(".truth");
    for (const emotion of EMOTIONS) truth.append(new Option(emotion, emotion));
    truth.value = EMOTIONS.find((e) => e !== face.emotion);
    const why = card.querySelector(".why");
    why.disabled = !face.heatmap;
    why.addEventListener("click", () => {
      const heat = stage.querySelector(`.box[data-face="${index}"] img.heat`);
      heat.hidden = !heat.hidden;
      why.textContent = heat.hidden ? "why?" : "hide why";
    });
    card.querySelector(".send").addEventListener("click", () =>
      sendCorrection(result.request_id, index, truth.value, card.querySelector(".sent")),
    );
    container.append(card);
  });
}

async function sendCorrection(requestId, instance, emotion, status) {
  clearError();
  try {
    const response = await request("/v1/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ request_id: requestId, instance, label: emotion }),
    });
    const answer = await response.json();
    const counts = answer.face.corrections;
    status.textContent = answer.face.kept
      ? `thanks: kept for training (${counts.pending} of ${counts.per_batch} for the next batch)` +
        (answer.face.batch_complete ? "; a batch is on its way to the landing zone" : "")
      : "thanks: the label is logged";
    refreshPanel();
  } catch (error) {
    showError("the correction was not sent: " + error.message);
  }
}

async function analyzePhoto(blob) {
  clearError();
  const stage = $("photo-stage");
  $("photo-summary").textContent = "analysing ...";
  $("photo-faces").replaceChildren();
  try {
    const result = await analyzeImage(blob, "?explain=1");
    const image = $("photo-image");
    image.src = URL.createObjectURL(blob);
    await image.decode().catch(() => {});
    stage.hidden = false;
    drawBoxes(stage, result);
    faceCards($("photo-faces"), stage, result);
    $("photo-summary").textContent = result.faces.length
      ? `${result.faces.length} face(s) in ${result.width}×${result.height}, ${readBy(result.model)}; ` +
        `"why?" shows where the model looked`
      : "no face found in this photo";
  } catch (error) {
    stage.hidden = true;
    $("photo-summary").textContent = "";
    showError("the photo could not be analysed: " + error.message);
  }
}

// ---------------------------------------------------------------- video

let videoResult = null;

function svg(tag, attributes) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

// One chart per person: the seven probabilities over time (lines) and the emotion shown at each
// sampled frame (the strip under them), with time in seconds.
function personChart(person, points, duration) {
  const width = 640, height = 170, left = 34, right = 8, top = 8, plot = 110, strip = 14;
  const x = (t) => left + ((width - left - right) * t) / Math.max(duration, 1e-6);
  const y = (p) => top + plot * (1 - p);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `person ${person.person}` });
  for (const p of [0, 0.5, 1]) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(p), y2: y(p), stroke: "#e3e7ef" }));
    const text = svg("text", { x: 2, y: y(p) + 4, "font-size": 10, fill: "#667085" });
    text.textContent = p.toFixed(1);
    chart.append(text);
  }
  for (const emotion of EMOTIONS) {
    const path = points.map((pt) => `${x(pt.time).toFixed(1)},${y(pt.probabilities[emotion]).toFixed(1)}`);
    chart.append(svg("polyline", { points: path.join(" "), fill: "none", stroke: COLOURS[emotion], "stroke-width": 1.6 }));
  }
  const step = points.length > 1 ? (points[points.length - 1].time - points[0].time) / (points.length - 1) : 0.5;
  for (const pt of points) {
    const shown = pt.smoothed_emotion || pt.emotion;
    const rect = svg("rect", {
      x: x(pt.time) - 0.5 * (x(step) - x(0)), y: top + plot + 6, width: Math.max(1, x(step) - x(0)), height: strip,
      fill: COLOURS[shown],
    });
    const title = svg("title", {});
    title.textContent = `${pt.time.toFixed(2)} s: ${shown}`;
    rect.append(title);
    chart.append(rect);
  }
  const ticks = Math.min(8, Math.max(1, Math.floor(duration)));
  for (let i = 0; i <= ticks; i++) {
    const t = (duration * i) / ticks;
    const text = svg("text", { x: x(t) - 8, y: height - 4, "font-size": 10, fill: "#667085" });
    text.textContent = t.toFixed(1) + " s";
    chart.append(text);
  }
  return chart;
}

function renderVideo(result) {
  const people = $("video-people");
  people.replaceChildren();
  const duration = result.timeline.length ? result.timeline[result.timeline.length - 1].time : 0;
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const emotion of EMOTIONS) {
    const item = document.createElement("span");
    item.innerHTML = `<i style="background:${COLOURS[emotion]}"></i>${emotion}`;
    legend.append(item);
  }
  people.append(legend);
  for (const person of result.people) {
    const points = [];
    for (const entry of result.timeline) {
      for (const face of entry.faces) if (face.person === person.person) points.push({ time: entry.time, ...face });
    }
    const card = document.createElement("div");
    card.className = "person";
    card.dataset.person = String(person.person);
    const title = document.createElement("h3");
    const shares = Object.entries(person.emotions).map(([e, s]) => `${e} ${(100 * s).toFixed(0)}%`).join(", ");
    title.textContent = `Person #${person.person}: mostly ${person.dominant_emotion} ` +
      `(seen ${person.first_seen.toFixed(1)}-${person.last_seen.toFixed(1)} s, ${person.frames} frames; ${shares})`;
    card.append(title, personChart(person, points, duration));
    people.append(card);
  }
  $("video-summary").textContent =
    `${result.people.length} person(s) in ${result.timeline.length} sampled frames ` +
    `(${result.width}×${result.height}, ${result.fps} fps, one frame every ${result.sampled_every_seconds} s)` +
    (readBy(result.model) ? `, ${readBy(result.model)}` : "");
  $("video-downloads").hidden = false;
}

function videoQuery(extra = "") {
  return `?every=${$("video-every").value}&smooth=${$("video-smooth").value}${extra}`;
}

async function postVideo(extra) {
  const file = $("video-file").files[0];
  return request("/v1/videos:analyze" + videoQuery(extra), {
    method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
  });
}

async function analyzeVideo() {
  clearError();
  $("video-busy").hidden = false;
  $("video-analyze").disabled = true;
  $("video-people").replaceChildren();
  $("video-summary").textContent = "";
  $("video-downloads").hidden = true;
  try {
    videoResult = await (await postVideo("")).json();
    renderVideo(videoResult);
  } catch (error) {
    showError("the video could not be analysed: " + error.message);
  } finally {
    $("video-busy").hidden = true;
    $("video-analyze").disabled = false;
  }
}

function download(blob, name) {
  const link = $("video-download");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
}

// The same columns as the gateway's format=csv (serving/tracking.py), from the result at hand:
// asking the gateway again would analyse (and log) the whole video a second time.
function timelineCsv(result) {
  const columns = ["time", "frame", "person", "emotion", "confidence", "uncertain", "smoothed_emotion",
    "x", "y", "width", "height", ...EMOTIONS.map((e) => "prob_" + e)];
  const rows = [columns.join(",")];
  for (const entry of result.timeline) {
    for (const face of entry.faces) {
      const b = face.box;
      rows.push([entry.time, entry.frame, face.person, face.emotion, face.confidence, face.uncertain ? "True" : "False",
        face.smoothed_emotion || "", b.x, b.y, b.width, b.height,
        ...EMOTIONS.map((e) => face.probabilities[e])].join(","));
    }
  }
  return rows.join("\n") + "\n";
}

async function downloadVideo(kind) {
  clearError();
  try {
    if (kind === "json") {
      download(new Blob([JSON.stringify(videoResult, null, 1)], { type: "application/json" }), "timeline.json");
    } else if (kind === "csv") {
      download(new Blob([timelineCsv(videoResult)], { type: "text/csv" }), "timeline.csv");
    } else {
      download(await (await postVideo("&annotate=1")).blob(), "annotated.mp4");
    }
  } catch (error) {
    showError("the download failed: " + error.message);
  }
}

// ---------------------------------------------------------------- webcam

const live = { stream: null, running: false, inFlight: 0, done: [], latencies: [], frames: 0, faces: 0, lastBytes: 0 };
window.moodloopLive = live; // read by the browser test and handy in the console

function frameBlob(video, width, quality = 0.8) {
  const height = Math.round((width * video.videoHeight) / video.videoWidth);
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").drawImage(video, 0, 0, width, height);
  return new Promise((resolve) => canvas.toBlob((blob) => resolve({ blob, width, height }), "image/jpeg", quality));
}

function drawLive(result, scale) {
  const video = $("webcam-video");
  const canvas = $("webcam-overlay");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.lineWidth = 3;
  context.font = "bold 18px system-ui, sans-serif";
  result.faces.forEach((face, index) => {
    const b = face.box;
    const colour = COLOURS[face.emotion];
    context.strokeStyle = colour;
    context.setLineDash(face.uncertain ? [8, 5] : []);
    context.strokeRect(b.x * scale, b.y * scale, b.width * scale, b.height * scale);
    const text = label(face, index);
    const textWidth = context.measureText(text).width;
    context.fillStyle = colour;
    context.fillRect(b.x * scale, b.y * scale - 24, textWidth + 10, 24);
    context.fillStyle = "#fff";
    context.fillText(text, b.x * scale + 5, b.y * scale - 6);
  });
}

function showRate() {
  const now = performance.now();
  live.done = live.done.filter((t) => now - t < 3000);
  live.latencies = live.latencies.slice(-30);
  const seconds = Math.min(3, (now - (live.startedAt || now)) / 1000) || 1;
  live.rate = live.done.length / seconds;
  const latency = live.latencies.length ? live.latencies.reduce((a, b) => a + b, 0) / live.latencies.length : 0;
  $("webcam-rate").textContent =
    `${live.rate.toFixed(1)} analysed frames/s · ${latency.toFixed(0)} ms per frame · ` +
    `sending ${$("webcam-width").value} px JPEG (${(live.lastBytes / 1024).toFixed(0)} KB) · ${live.faces} face(s)`;
}

async function analyzeLiveFrame() {
  const video = $("webcam-video");
  if (!live.running || !video.videoWidth) return;
  live.inFlight += 1;
  const started = performance.now();
  try {
    const width = Math.min(Number($("webcam-width").value), video.videoWidth);
    const frame = await frameBlob(video, width);
    live.lastBytes = frame.blob.size;
    const result = await analyzeImage(frame.blob, "?live=1"); // live frames are not kept for corrections
    if (!live.running) return;
    live.frames += 1;
    live.faces = result.faces.length;
    live.done.push(performance.now());
    live.latencies.push(performance.now() - started);
    drawLive(result, video.videoWidth / frame.width);
    showRate();
  } catch (error) {
    showError("live analysis: " + error.message);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  } finally {
    live.inFlight -= 1;
  }
}

// Two frames in flight: one is analysed while the next is captured and sent, so the gateway's
// two cores both work; more would only queue.
async function liveLoop() {
  while (live.running) {
    if (live.inFlight < 2) analyzeLiveFrame();
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function startWebcam() {
  clearError();
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false,
    });
  } catch (error) {
    showError("the camera cannot be opened: " + error.message);
    return;
  }
  const video = $("webcam-video");
  video.srcObject = live.stream;
  await video.play().catch(() => {});
  Object.assign(live, { running: true, startedAt: performance.now(), done: [], latencies: [], frames: 0 });
  $("webcam-start").disabled = true;
  $("webcam-stop").disabled = false;
  $("webcam-snapshot").disabled = false;
  liveLoop();
}

function stopWebcam() {
  live.running = false;
  if (live.stream) for (const track of live.stream.getTracks()) track.stop();
  $("webcam-video").srcObject = null;
  $("webcam-start").disabled = false;
  $("webcam-stop").disabled = true;
  $("webcam-snapshot").disabled = true;
  $("webcam-rate").textContent = "camera off";
}

async function snapshot() {
  const video = $("webcam-video");
  const frame = await frameBlob(video, video.videoWidth, 0.92);
  showTab("photo");
  analyzePhoto(frame.blob);
}

// ---------------------------------------------------------------- model panel

function verdictClass(value) {
  return ["BLESSED", "no_drift", "promote", "ramp", "pass"].includes(value)
    ? "good"
    : ["REJECTED", "drift", "incident", "rollback"].includes(value) ? "bad" : "";
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

function reasonList(reasons) {
  const list = document.createElement("ul");
  for (const reason of reasons || []) {
    const item = document.createElement("li");
    item.textContent = reason;
    list.append(item);
  }
  return list;
}

function section(title) {
  const heading = document.createElement("h3");
  heading.textContent = title;
  return heading;
}

const percent = (x) => (100 * x).toFixed(1) + "%";

// A side's accuracy estimated without labels: the method that decides, its value and interval.
function estimateText(found) {
  if (!found) return "-";
  const chosen = found[found.decides];
  return `${percent(chosen.accuracy)} (${percent(chosen.low)}-${percent(chosen.high)}, ${found.decides.toUpperCase()})`;
}

// What decided (feedback labels, or the label-free checks when labels are too few) and both sides' numbers.
function canaryDecision(decision) {
  const verdict = document.createElement("p");
  verdict.id = "panel-canary";
  verdict.innerHTML = `<span class="verdict ${verdictClass(decision.action)}"></span> `;
  verdict.firstChild.textContent = decision.action;
  const evidence = { labels: "decided on feedback labels", heuristics: "decided on label-free checks (too few labels)" }[decision.evidence];
  const versions = decision.canary_version != null ? `canary v${decision.canary_version} vs stable v${decision.stable_version}` : "";
  verdict.append([versions, evidence, when(decision.time)].filter(Boolean).join(" · "));
  const parts = [verdict];
  if (decision.canary && decision.stable && decision.canary.requests && decision.stable.requests) {
    const table = document.createElement("table");
    table.id = "panel-canary-sides";
    table.innerHTML = "<tr><th></th><th>predictions</th><th>labelled</th><th>accuracy</th><th>estimated (no labels)</th><th>mean confidence</th><th>p95 ms</th></tr>";
    for (const side of ["stable", "canary"]) {
      const numbers = decision[side];
      const row = table.insertRow();
      for (const value of [
        side,
        numbers.requests,
        numbers.labelled,
        numbers.accuracy != null ? (100 * numbers.accuracy).toFixed(1) + "%" : "-",
        estimateText(numbers.accuracy_estimate),
        numbers.mean_confidence.toFixed(3),
        numbers.latency_p95_ms.toFixed(1),
      ]) row.insertCell().textContent = value;
    }
    parts.push(table);
  }
  parts.push(reasonList([...(decision.reasons || []), ...(decision.findings || [])]));
  return parts;
}

function renderPanel(panel) {
  const body = $("panel-body");
  body.replaceChildren();
  const table = document.createElement("table");
  table.id = "panel-versions";
  table.innerHTML = "<tr><th>version</th><th>state</th><th>serves as</th></tr>";
  for (const version of panel.versions) {
    const row = table.insertRow();
    row.insertCell().textContent = version.version;
    row.insertCell().textContent = version.state;
    row.insertCell().textContent = version.labels.join(", ");
  }
  body.append(section(`Versions of "${panel.model}"`));
  if (panel.versions.length) body.append(table);
  else body.append(document.createTextNode(panel.waiting || "no version yet"));
  const share = document.createElement("p");
  share.id = "panel-share";
  share.textContent = panel.labels.canary
    ? `canary v${panel.labels.canary} gets ${(100 * panel.canary_share).toFixed(0)}% of clients; stable v${panel.labels.stable}`
    : "no canary: every client is served by " + (panel.labels.stable ? `stable v${panel.labels.stable}` : "the newest version");
  body.append(share);

  body.append(section("Latest A/B gate"));
  if (panel.gate) {
    const verdict = document.createElement("p");
    verdict.innerHTML = `<span class="verdict ${verdictClass(panel.gate.verdict)}"></span> `;
    verdict.firstChild.textContent = panel.gate.verdict;
    const accuracy = panel.gate.candidate_accuracy != null ? `candidate ${(100 * panel.gate.candidate_accuracy).toFixed(1)}%` : "";
    const champion = panel.gate.champion_accuracy != null ? `, champion ${(100 * panel.gate.champion_accuracy).toFixed(1)}%` : "";
    // after a drift the gate judges on the current traffic's faces (components/ab_gate.py): say so
    const judged = panel.gate.judged && panel.gate.judged.on === "current" ? ` on current traffic (${panel.gate.judged.faces} faces)` : "";
    verdict.append(`${accuracy}${champion}${judged} · ${when(panel.gate.time)}`);
    body.append(verdict, reasonList(panel.gate.reasons));
    const gap = panel.gate.largest_slice_gap;
    if (gap) {
      const line = document.createElement("p");
      line.className = "slice-gap";
      line.textContent = `largest gap between slices: ${gap.attribute}, ${(100 * gap.accuracy_gap).toFixed(1)} points (${gap.best} best, ${gap.worst} worst)`;
      body.append(line);
    }
    for (const [path, alt] of [[panel.gate.image, "the A/B gate's report"], [panel.gate.bias_image, "the bias audit: accuracy and recall per slice"]]) {
      if (!path) continue;
      const link = document.createElement("a");
      link.href = path + "?t=" + panel.gate.time;
      link.target = "_blank";
      const image = document.createElement("img");
      image.src = link.href;
      image.alt = alt;
      link.append(image);
      body.append(link);
    }
  } else body.append(document.createTextNode("no gate has run yet"));

  body.append(section("Latest drift check"));
  if (panel.drift) {
    const verdict = document.createElement("p");
    verdict.innerHTML = `<span class="verdict ${verdictClass(panel.drift.outcome)}"></span> `;
    verdict.firstChild.textContent = panel.drift.outcome.replace("_", " ");
    verdict.append(when(panel.drift.time));
    body.append(verdict, reasonList(panel.drift.reasons));
    const estimates = Object.entries(panel.drift.accuracy_estimate || {});
    if (estimates.length) {
      // Accuracy without labels (the version's estimator) beside the realised one where labels exist.
      const table = document.createElement("table");
      table.id = "panel-estimates";
      table.innerHTML = "<tr><th>version</th><th>estimated accuracy</th><th>95% interval</th><th>labelled accuracy</th></tr>";
      for (const [version, found] of estimates) {
        const chosen = found[found.decides];
        const live = (panel.drift.live_accuracy || {})[version];
        const row = table.insertRow();
        for (const value of [
          version,
          `${percent(chosen.accuracy)} (${found.decides.toUpperCase()}, ${chosen.faces} faces)`,
          `${percent(chosen.low)} - ${percent(chosen.high)}`,
          live ? `${percent(live.accuracy)} on ${live.labelled} labels` : "no labels yet",
        ]) row.insertCell().textContent = value;
      }
      body.append(table);
    }
    const links = document.createElement("p");
    if (panel.drift.report) {
      const report = document.createElement("a");
      report.href = panel.drift.report;
      report.target = "_blank";
      report.textContent = "Evidently report";
      links.append(report, " · ");
    }
    const ui = document.createElement("a");
    ui.href = panel.evidently_ui;
    ui.target = "_blank";
    ui.textContent = "Evidently UI";
    links.append(ui);
    body.append(links);
  } else body.append(document.createTextNode("no drift window checked yet"));

  body.append(section("Latest canary analysis"));
  if (panel.canary) body.append(...canaryDecision(panel.canary));
  else body.append(document.createTextNode("no canary analysed yet"));

  const c = panel.corrections;
  body.append(section("Corrections"));
  const corrections = document.createElement("p");
  corrections.id = "panel-corrections";
  corrections.textContent =
    `${c.pending} of ${c.per_batch} corrected faces gathered for the next landing batch; ` +
    `${c.delivered_batches} batch(es) sent (${c.delivered_faces} faces)`;
  body.append(corrections);
  if (panel.labelling && panel.labelling.queued) {
    const queue = document.createElement("p");
    queue.id = "panel-labelling";
    queue.textContent = "Label tab: " + labelSummary(panel.labelling);
    body.append(queue);
  }
  const detector = document.createElement("p");
  detector.className = "summary";
  detector.textContent = `faces found by ${panel.face_detector}; "uncertain" below ${(100 * panel.min_confidence).toFixed(0)}% confidence`;
  body.append(detector);
}

async function refreshPanel() {
  try {
    renderPanel(await (await request("/v1/panel")).json());
  } catch (error) {
    $("panel-body").textContent = "the model panel is unavailable: " + error.message;
  }
}

// ---------------------------------------------------------------- label

let labelFace = null; // the face on the desk, from GET /v1/labelling/next

function labelSummary(answer) {
  const labelled = answer.labelled || {};
  const left = answer.waiting ? `${answer.waiting} of ${answer.queued} queued faces wait for a label` : "no face waits for a label";
  const gathered = `${labelled.pending || 0} of ${answer.budget} labelled for the next batch`;
  const sent = labelled.delivered_batches ? `; ${labelled.delivered_batches} batch(es) sent` : "";
  return `${left} (${answer.strategy || "no queue yet"}): ${gathered}${sent}`;
}

async function nextLabelFace() {
  clearError();
  try {
    const answer = await (await request("/v1/labelling/next")).json();
    labelFace = answer.face;
    $("label-summary").textContent = labelSummary(answer);
    $("label-desk").hidden = !labelFace;
    if (labelFace) {
      $("label-face").src = "data:image/png;base64," + labelFace.png_b64;
      $("label-why").textContent = `the model said ${labelFace.predicted} (${(100 * labelFace.confidence).toFixed(0)}%); asked because: ${labelFace.why}`;
    }
  } catch (error) {
    showError("the labelling queue cannot be read: " + error.message);
  }
}

async function answerLabel(answer) {
  if (!labelFace) return;
  clearError();
  try {
    const response = await request("/v1/labelling/answer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ face_id: labelFace.face_id, answer }),
    });
    const took = await response.json();
    $("label-sent").textContent = `${labelFace.face_id}: ${answer}` + (took.batch_complete ? "; a batch is on its way to the landing zone" : "");
    await nextLabelFace();
  } catch (error) {
    showError("the answer was not sent: " + error.message);
  }
}

async function deliverLabels() {
  clearError();
  try {
    const answer = await (await request("/v1/labelling/deliver", { method: "POST" })).json();
    $("label-sent").textContent = answer.delivered ? `sent as ${answer.delivered}` : "nothing labelled to send";
    $("label-summary").textContent = labelSummary(answer);
  } catch (error) {
    showError("the labels were not sent: " + error.message);
  }
}

function labelButtons() {
  EMOTIONS.forEach((emotion, index) => {
    const button = document.createElement("button");
    button.textContent = `${index + 1} ${emotion}`;
    button.dataset.answer = emotion;
    button.style.borderColor = COLOURS[emotion];
    $("label-buttons").append(button);
  });
  for (const button of document.querySelectorAll("#tab-label button[data-answer]")) {
    button.addEventListener("click", () => answerLabel(button.dataset.answer));
  }
  document.addEventListener("keydown", (event) => {
    if ($("tab-label").hidden || !labelFace || event.target.tagName === "INPUT") return;
    const index = Number(event.key);
    if (event.key >= "1" && event.key <= "7") answerLabel(EMOTIONS[index - 1]);
    else if (event.key === "0") answerLabel("not_a_face");
    else if (event.key === "s") answerLabel("skip");
  });
  $("label-deliver").addEventListener("click", deliverLabels);
}

// ---------------------------------------------------------------- wiring

window.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("nav button")) {
    button.addEventListener("click", () => {
      showTab(button.dataset.tab);
      if (button.dataset.tab === "label") nextLabelFace();
    });
  }
  labelButtons();
  $("photo-file").addEventListener("change", (event) => {
    if (event.target.files[0]) analyzePhoto(event.target.files[0]);
  });
  $("video-file").addEventListener("change", (event) => {
    $("video-analyze").disabled = !event.target.files[0];
    if (event.target.files[0]) analyzeVideo();
  });
  // Drop a file anywhere on a drop zone: it is handed to the zone's file input.
  for (const zone of document.querySelectorAll(".drop")) {
    zone.addEventListener("dragover", (event) => event.preventDefault());
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      const input = zone.querySelector("input[type=file]");
      input.files = event.dataTransfer.files;
      input.dispatchEvent(new Event("change"));
    });
  }
  $("video-analyze").addEventListener("click", analyzeVideo);
  $("video-annotated").addEventListener("click", () => downloadVideo("video"));
  $("video-csv").addEventListener("click", () => downloadVideo("csv"));
  $("video-json").addEventListener("click", () => downloadVideo("json"));
  $("webcam-start").addEventListener("click", startWebcam);
  $("webcam-stop").addEventListener("click", stopWebcam);
  $("webcam-snapshot").addEventListener("click", snapshot);
  refreshPanel();
  setInterval(refreshPanel, 5000);
});
