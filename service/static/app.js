// The ECG page: upload a record to the service's own file endpoints and draw the answer.
// Plain JavaScript, no build step. The page state is on <body data-state="idle|loading|done|error">.
"use strict";

const CLASS_COLOURS = {
  N: "#2f855a", S: "#2b6cb0", V: "#c53030", F: "#dd6b20", Q: "#805ad5", unreadable: "#a0aec0",
};
const CLASS_NAMES = {
  N: "normal / bundle-branch", S: "supraventricular ectopic", V: "ventricular ectopic",
  F: "fusion", Q: "unclassifiable / paced", unreadable: "unreadable",
};
const WINDOW_S = 10;
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
let current = null; // {arr, windowStart}

function setState(state, message, isError) {
  document.body.dataset.state = state;
  const status = $("status");
  status.textContent = message || "";
  status.className = "status" + (isError ? " error" : state === "loading" ? " busy" : "");
}

function headers() {
  const key = $("opt-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

async function loadModels() {
  try {
    const r = await fetch("/models");
    if (!r.ok) throw new Error((await r.json()).detail || r.statusText);
    const body = await r.json();
    const parts = body.models.map((m) => `${m.task}: ${m.name} v${m.version} (@${m.alias})`);
    body.unavailable.forEach((m) => parts.push(`${m.task}: not loaded`));
    $("models").textContent = "Served models: " + (parts.join(" · ") || "none");
  } catch (err) {
    $("models").textContent = "Served models: unknown (" + err.message + ")";
  }
}

// ------------------------------------------------------------------ requests
function endpoint(task, includeSignal) {
  const params = new URLSearchParams();
  if (includeSignal) params.set("include_signal", "true");
  const lead = $("opt-lead").value.trim();
  if (lead && task === "arrhythmia") params.set("lead", lead);
  const fs = $("opt-fs").value.trim();
  if (fs) params.set("fs", fs);
  return `/predict/${task}/file?${params}`;
}

async function post(task, files, includeSignal) {
  const form = new FormData();
  files.forEach((f) => form.append("files", f, f.name));
  const r = await fetch(endpoint(task, includeSignal), {
    method: "POST", body: form, headers: headers(),
  });
  let body = null;
  try { body = await r.json(); } catch (e) { body = { detail: r.statusText }; }
  return { ok: r.ok, status: r.status, body };
}

async function analyse(files) {
  if (!files.length) return;
  const names = files.map((f) => f.name).join(", ");
  setState("loading", `Analysing ${names}…`);
  try {
    const [arr, hd] = await Promise.all([
      post("arrhythmia", files, true), post("heart-disease", files, false),
    ]);
    if (!arr.ok) {
      $("result").hidden = true;
      $("disease").hidden = true;
      setState("error", `${arr.status}: ${arr.body.detail}`, true);
      return;
    }
    renderArrhythmia(arr.body, names);
    renderDisease(hd, arr.body.record);
    setState("done", `Done: ${names}`);
  } catch (err) {
    setState("error", "The service could not be reached: " + err.message, true);
  }
}

async function loadExample(list) {
  setState("loading", "Fetching the example…");
  const files = [];
  for (const name of list.split(",")) {
    const r = await fetch("/static/examples/" + name);
    if (!r.ok) { setState("error", `example ${name}: ${r.status}`, true); return; }
    files.push(new File([await r.blob()], name));
  }
  await analyse(files);
}

// ------------------------------------------------------------------ quality (optional fields)
function qualityOf(item) {
  const q = item && item.quality;
  if (q == null) return null;
  if (typeof q === "string") {
    const reasons = item.quality_reasons || item.reasons || [];
    return { verdict: q, reasons: Array.isArray(reasons) ? reasons : [String(reasons)] };
  }
  return { verdict: q.verdict || "unknown", reasons: q.reasons || [] };
}

function beatClass(beat) {
  const q = qualityOf(beat);
  if (q && q.verdict === "unreadable") return "unreadable";
  return beat.label || "unreadable";
}

// ------------------------------------------------------------------ rendering
function renderArrhythmia(arr, names) {
  current = { arr, windowStart: 0 };
  const rec = arr.record;
  $("result").hidden = false;
  $("record-title").textContent = rec.name || names;
  const source = arr.r_peaks_source === "given" ? "annotated beats (.atr)" : "detected beats";
  $("record-meta").textContent =
    `${rec.format.toUpperCase()} · ${rec.fs} Hz · ${rec.duration_s.toFixed(1)} s · ` +
    `leads ${rec.leads.join(", ")} · classified lead ${arr.lead}, ${source} · ` +
    `model ${arr.model.name} v${arr.model.version}`;
  $("beat-count").textContent = String(arr.summary.n_beats);

  const chips = $("class-counts");
  chips.replaceChildren();
  Object.entries(arr.summary.counts).forEach(([cls, n]) => {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.dataset.cls = cls;
    chip.innerHTML = `<span class="dot" style="background:${CLASS_COLOURS[cls] || "#718096"}"></span>`;
    chip.append(`${cls} ${n}`);
    chip.title = CLASS_NAMES[cls] || cls;
    chips.append(chip);
  });
  if (arr.summary.abnormal_fraction != null) {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.textContent = `abnormal ${(100 * arr.summary.abnormal_fraction).toFixed(1)}%`;
    chips.append(chip);
  }

  const q = qualityOf(arr);
  const qp = $("quality");
  qp.hidden = !q;
  if (q) {
    qp.innerHTML = `Signal quality: <span class="badge ${q.verdict}">${q.verdict}</span> `;
    if (q.reasons.length) qp.append(q.reasons.join("; "));
  }
  const warnings = $("warnings");
  warnings.replaceChildren();
  (arr.warnings || []).forEach((w) => {
    const li = document.createElement("li");
    li.textContent = w;
    warnings.append(li);
  });

  const duration = arr.signal ? arr.signal.length / rec.fs : rec.duration_s;
  const windows = Math.max(1, Math.ceil(duration / WINDOW_S - 1e-9));
  $("window-controls").hidden = windows <= 1;
  const slider = $("window-slider");
  slider.max = String(windows - 1);
  slider.value = "0";
  $("legend").innerHTML = "Beat classes:" + Object.keys(arr.summary.counts)
    .filter((c) => c !== "unreadable")
    .concat(["unreadable"])
    .map((c) => `<span class="dot" style="background:${CLASS_COLOURS[c] || "#718096"}"></span>` +
      (c === "unreadable" ? "unreadable signal" : `${c} ${CLASS_NAMES[c] || ""}`))
    .join("") + " · hover a beat for its probabilities";
  drawWindow(0);
}

function drawWindow(index) {
  const { arr } = current;
  const fs = arr.record.fs;
  const signal = arr.signal || [];
  const start = index * WINDOW_S;
  const stop = Math.min(start + WINDOW_S, signal.length / fs || arr.record.duration_s);
  current.windowStart = start;
  $("window-label").textContent =
    `${start.toFixed(0)}–${stop.toFixed(0)} s of ${arr.record.duration_s.toFixed(0)} s`;

  const svg = $("ecg");
  svg.replaceChildren();
  const width = svg.clientWidth || 1100;
  const height = svg.clientHeight || 300;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const top = 22, bottom = height - 20;
  const i0 = Math.floor(start * fs), i1 = Math.min(signal.length, Math.ceil(stop * fs));
  let lo = Infinity, hi = -Infinity;
  for (let i = i0; i < i1; i++) { lo = Math.min(lo, signal[i]); hi = Math.max(hi, signal[i]); }
  if (!isFinite(lo)) { lo = -1; hi = 1; }
  const pad = Math.max(0.2, 0.08 * (hi - lo));
  lo -= pad; hi += pad;
  const x = (t) => ((t - start) / WINDOW_S) * width;
  const y = (v) => bottom - ((v - lo) / (hi - lo)) * (bottom - top);

  // ECG paper: minor 0.04 s / 0.1 mV, major 0.2 s / 0.5 mV.
  const grid = document.createElementNS(SVG_NS, "g");
  for (let t = Math.ceil(start / 0.04) * 0.04; t <= start + WINDOW_S + 1e-9; t += 0.04) {
    const major = Math.abs(t / 0.2 - Math.round(t / 0.2)) < 1e-6;
    grid.append(line(x(t), top - 22, x(t), height, major ? "grid-major" : "grid-minor"));
  }
  for (let v = Math.ceil(lo / 0.1) * 0.1; v <= hi; v += 0.1) {
    const major = Math.abs(v / 0.5 - Math.round(v / 0.5)) < 1e-6;
    grid.append(line(0, y(v), width, y(v), major ? "grid-major" : "grid-minor"));
  }
  svg.append(grid);

  const beatsLayer = document.createElementNS(SVG_NS, "g");
  arr.beats.forEach((beat, k) => {
    if (beat.time_s < start || beat.time_s >= start + WINDOW_S) return;
    const cls = beatClass(beat);
    const colour = CLASS_COLOURS[cls] || "#718096";
    const band = document.createElementNS(SVG_NS, "rect");
    band.setAttribute("x", x(beat.time_s - 0.15));
    band.setAttribute("y", top - 4);
    band.setAttribute("width", Math.max(4, x(beat.time_s + 0.15) - x(beat.time_s - 0.15)));
    band.setAttribute("height", bottom - top + 4);
    band.setAttribute("fill", colour);
    band.setAttribute("class", "beat-band");
    band.dataset.index = String(k);
    band.dataset.cls = cls;
    band.addEventListener("mouseenter", (ev) => showTooltip(beat, ev));
    band.addEventListener("mousemove", (ev) => moveTooltip(ev));
    band.addEventListener("mouseleave", hideTooltip);
    beatsLayer.append(band);
    const label = document.createElementNS(SVG_NS, "text");
    label.setAttribute("x", x(beat.time_s));
    label.setAttribute("y", top - 8);
    label.setAttribute("fill", colour);
    label.setAttribute("class", "beat-label");
    label.textContent = cls === "unreadable" ? "?" : cls;
    beatsLayer.append(label);
  });
  svg.append(beatsLayer);

  if (i1 > i0) {
    const step = Math.max(1, Math.floor((i1 - i0) / (2 * width)));
    const pts = [];
    for (let i = i0; i < i1; i += step) pts.push(`${x(i / fs).toFixed(1)},${y(signal[i]).toFixed(1)}`);
    const trace = document.createElementNS(SVG_NS, "polyline");
    trace.setAttribute("points", pts.join(" "));
    trace.setAttribute("class", "trace");
    svg.append(trace);
  }
  for (let t = Math.ceil(start); t <= start + WINDOW_S; t += 1) {
    const label = document.createElementNS(SVG_NS, "text");
    label.setAttribute("x", x(t) + 2);
    label.setAttribute("y", height - 5);
    label.setAttribute("class", "axis");
    label.textContent = `${t} s`;
    svg.append(label);
  }
  const scale = document.createElementNS(SVG_NS, "text");
  scale.setAttribute("x", 6);
  scale.setAttribute("y", top + 10);
  scale.setAttribute("class", "axis");
  scale.textContent = `${arr.lead} · grid 0.2 s × 0.5 mV`;
  svg.append(scale);
  svg.dataset.beatsDrawn = String(beatsLayer.querySelectorAll(".beat-band").length);
}

function line(x1, y1, x2, y2, cls) {
  const l = document.createElementNS(SVG_NS, "line");
  l.setAttribute("x1", x1); l.setAttribute("y1", y1);
  l.setAttribute("x2", x2); l.setAttribute("y2", y2);
  l.setAttribute("class", cls);
  return l;
}

function showTooltip(beat, ev) {
  const tip = $("tooltip");
  const cls = beatClass(beat);
  const q = qualityOf(beat);
  let html = `<strong>${cls}</strong> beat at ${beat.time_s.toFixed(2)} s` +
    ` <small>(sample ${beat.sample})</small>`;
  if (beat.probabilities) {
    Object.entries(beat.probabilities)
      .sort((a, b) => b[1] - a[1])
      .forEach(([c, p]) => {
        html += `<div class="row"><span>${c}</span><span class="bar" style="width:` +
          `${Math.max(2, 100 * p).toFixed(0)}%;background:${CLASS_COLOURS[c] || "#cbd5e0"}"></span>` +
          `<span>${(100 * p).toFixed(1)}%</span></div>`;
      });
  }
  if (q) {
    html += `<div class="reason">quality: ${q.verdict}` +
      (q.reasons.length ? ` (${q.reasons.join("; ")})` : "") + "</div>";
  }
  tip.innerHTML = html;
  tip.hidden = false;
  moveTooltip(ev);
}

function moveTooltip(ev) {
  const tip = $("tooltip");
  const box = tip.parentElement.getBoundingClientRect();
  let left = ev.clientX - box.left + 14;
  if (left + tip.offsetWidth > box.width) left = ev.clientX - box.left - tip.offsetWidth - 14;
  tip.style.left = `${Math.max(0, left)}px`;
  tip.style.top = `${Math.max(0, ev.clientY - box.top - 10)}px`;
}

function hideTooltip() { $("tooltip").hidden = true; }

function renderDisease(hd, record) {
  const panel = $("disease");
  const bars = $("superclasses");
  bars.replaceChildren();
  if (!hd.ok) {
    // A one- or two-lead record simply has no 12-lead answer; say why only for multi-lead ones.
    panel.hidden = record.leads.length < 8;
    $("disease-note").textContent = `No superclass answer (${hd.status}): ${hd.body.detail}`;
    return;
  }
  const body = hd.body;
  panel.hidden = false;
  const windows = body.windows.length;
  $("disease-note").textContent =
    `${body.model.name} v${body.model.version} · ` +
    (windows > 1 ? `first of ${windows} windows of the record` : "the whole record") +
    (body.labels.length ? ` · above 50%: ${body.labels.join(", ")}` : " · no superclass above 50%");
  const rows = Object.entries(body.probabilities);
  rows.push(["disease", body.heart_disease_probability]);
  rows.forEach(([name, p]) => {
    const row = document.createElement("div");
    row.className = "row" + (name === "disease" ? " total" : "");
    row.dataset.cls = name;
    const title = name === "disease" ? "disease: 1 − P(NORM)" : name;
    row.innerHTML = `<span>${title}</span><div class="track"><div class="fill${p >= 0.5 &&
      name !== "NORM" ? " hot" : ""}" style="width:${(100 * p).toFixed(1)}%"></div></div>` +
      `<span>${(100 * p).toFixed(1)}%</span>`;
    bars.append(row);
  });
}

// ------------------------------------------------------------------ wiring
function init() {
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((ev) => drop.addEventListener(ev, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((ev) => drop.addEventListener(ev, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    analyse(Array.from(e.dataTransfer.files));
  });
  $("file-input").addEventListener("change", (e) => {
    analyse(Array.from(e.target.files));
    e.target.value = "";
  });
  document.querySelectorAll("button.example").forEach((b) =>
    b.addEventListener("click", () => loadExample(b.dataset.files)));
  $("window-slider").addEventListener("input", (e) => drawWindow(Number(e.target.value)));
  $("prev").addEventListener("click", () => step(-1));
  $("next").addEventListener("click", () => step(1));
  window.addEventListener("resize", () => current && drawWindow(current.windowStart / WINDOW_S));
  loadModels();
}

function step(delta) {
  const slider = $("window-slider");
  const value = Math.min(Number(slider.max), Math.max(0, Number(slider.value) + delta));
  slider.value = String(value);
  drawWindow(value);
}

document.addEventListener("DOMContentLoaded", init);
