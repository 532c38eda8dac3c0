// The dashboard page: polls /api/live (a snapshot of the sweep the coordinator shares
// between viewers), draws the step × seed grids on canvases, and shows the report's
// figures as the coordinator draws them from the live results. Read-only.
"use strict";

const POLL_MS = 2000;
const COLORS = {
  d: "#16a34a", // done
  l: "#f59e0b", // leased
  f: "#dc2626", // failed
  p: "#e5e7eb", // pending
  s: "#9ca3af", // skipped
  "-": "#ffffff", // no task
};
const DUPLICATE = "#7c3aed";

let liveEtag = null;
let figureStems = [];
const figureEtags = {};

const $ = (id) => document.getElementById(id);

function text(el, value) {
  el.textContent = value;
}

function cell(tr, value, cls) {
  const td = document.createElement("td");
  td.textContent = value;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function fill(tbody, rows, render) {
  const frag = document.createDocumentFragment();
  for (const row of rows) {
    const tr = document.createElement("tr");
    render(tr, row);
    frag.appendChild(tr);
  }
  tbody.replaceChildren(frag);
}

function bytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function duration(seconds) {
  if (seconds == null) return "–";
  if (seconds < 90) return `${seconds.toFixed(0)} s`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(0)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

// One canvas per model: a column per step, a row per seed. Cell geometry is kept in
// data attributes so that what is drawn can be checked pixel by pixel.
function drawGrid(model, index) {
  const id = `grid-${index}`;
  let box = $(id);
  if (!box) {
    box = document.createElement("div");
    box.className = "grid";
    box.id = id;
    const title = document.createElement("h3");
    box.appendChild(title);
    const canvas = document.createElement("canvas");
    box.appendChild(canvas);
    $("grids").appendChild(box);
  }
  const steps = model.steps.length;
  const seeds = model.seeds.length;
  const counts = model.counts;
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  text(
    box.querySelector("h3"),
    `${model.model} — ${counts.done}/${total} done, ${counts.leased} leased, ${counts.failed} failed` +
      ` (${steps} steps × ${seeds} seeds; ${model.finished_steps} steps finished)`
  );
  const width = Math.min(box.parentElement.clientWidth || 1200, 1400);
  const size = Math.max(3, Math.min(18, Math.floor((width - 4) / steps)));
  const gap = size >= 8 ? 1 : 0;
  const mark = 4;
  const canvas = box.querySelector("canvas");
  canvas.width = steps * size;
  canvas.height = mark + seeds * size;
  canvas.dataset.steps = steps;
  canvas.dataset.seeds = seeds;
  canvas.dataset.cell = size;
  canvas.dataset.top = mark;
  canvas.title = `${model.model}: columns are steps ${model.steps[0]} … ${model.steps[steps - 1]}`;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (let r = 0; r < steps; r++) {
    const duplicate = model.duplicate_of[r] != null;
    if (duplicate) {
      ctx.fillStyle = DUPLICATE;
      ctx.fillRect(r * size, 0, size - gap, mark - 1);
    }
    for (let c = 0; c < seeds; c++) {
      const state = model.cells[r * seeds + c];
      ctx.fillStyle = duplicate && state === "d" ? DUPLICATE : COLORS[state] || COLORS["-"];
      ctx.fillRect(r * size, mark + c * size, size - gap, size - gap);
    }
  }
}

function showSummary(view) {
  const s = view.status;
  text($("sweep-name"), s.sweep);
  text($("done"), s.done);
  text($("total"), s.total);
  text($("leased"), s.leased);
  text($("pending"), s.pending);
  text($("failed"), s.failed);
  text($("throughput"), s.throughput_per_s.toFixed(2));
  text($("eta"), s.pending + s.leased === 0 ? "finished" : duration(s.eta_seconds));
  $("progress").style.width = `${s.total ? (100 * (s.done + s.failed + s.skipped)) / s.total : 0}%`;
  const t = view.tally;
  text(
    $("events"),
    `Since the coordinator started: ${t.completions} results accepted, ${t.leases} tasks leased, ` +
      `${t.expiries} leases expired, ${t.retries} retries, ${t.releases} leases given back. ` +
      `${s.duplicates_ignored} repeated results ignored; ${s.skipped} tasks skipped` +
      (s.draining ? ". Draining: no new leases." : ".")
  );
}

function showWorkers(view) {
  const held = {};
  for (const w of view.leases) held[w.worker] = w.checkpoints;
  fill($("workers").tBodies[0], view.status.workers, (tr, w) => {
    cell(tr, w.id);
    cell(tr, w.cores, "num");
    cell(tr, w.leased, "num");
    cell(tr, `${w.seconds_since_seen.toFixed(1)} s ago`, "num");
    cell(
      tr,
      (held[w.id] || []).map((c) => `${c.model} step ${c.step} seeds ${c.seeds.join(",")}`).join("; ") || "–"
    );
    cell(tr, w.version);
  });
}

function showFetch(view) {
  fill($("fetch").tBodies[0], view.status.models, (tr, m) => {
    cell(tr, m.model);
    cell(tr, `${m.done}/${m.total}`, "num");
    cell(tr, bytes(m.fetch.bytes_fetched), "num");
    cell(tr, m.fetch.requests, "num");
    cell(tr, duration(m.fetch.fetch_ms / 1000), "num");
    cell(
      tr,
      Object.entries(m.weights_formats).map(([f, n]) => `${f} (${n})`).join(", ") || "not resolved yet"
    );
    cell(tr, m.latest_step ?? "–", "num");
    cell(tr, m.latest_E == null ? "–" : m.latest_E.toFixed(4), "num");
  });
  const modes = Object.entries(view.tally.fetched).map(
    ([mode, f]) => `${mode || "unknown"}: ${bytes(f.bytes)} in ${f.requests} requests`
  );
  text($("fetch-modes"), modes.length ? `By fetch mode, since the coordinator started: ${modes.join("; ")}` : "");
  // The cluster's Hub budget: what each rate-limited bucket granted and the waits it imposed.
  fill($("budget").tBodies[0], view.status.budget || [], (tr, b) => {
    cell(tr, b.bucket || "–");
    cell(tr, b.granted_in_window, "num");
    cell(tr, `${b.quota} per ${duration(b.window_seconds)}`, "num");
    cell(tr, b.granted, "num");
    cell(tr, duration(b.waited_seconds), "num");
    cell(tr, b.throttled, "num");
  });
}

function showFailures(view) {
  const shown = view.status.failures.length;
  text(
    $("failures-count"),
    view.failures_total > shown ? `(${view.failures_total}, the first ${shown} shown)` : `(${view.failures_total})`
  );
  fill($("failures").tBodies[0], view.status.failures, (tr, f) => {
    cell(tr, f.model);
    cell(tr, f.step, "num");
    cell(tr, f.seed, "num");
    cell(tr, f.attempts, "num");
    cell(tr, f.error, "reason");
  });
}

async function showFigure(container, stem) {
  const plot = container.querySelector(".plot");
  const headers = figureEtags[stem] ? { "If-None-Match": figureEtags[stem] } : {};
  const response = await fetch(`/figure/${encodeURIComponent(stem)}`, { headers, cache: "no-store" });
  if (response.status === 304) return;
  if (response.status === 404) {
    plot.className = "plot muted";
    text(plot, "no results yet");
    return;
  }
  if (!response.ok) return;
  figureEtags[stem] = response.headers.get("ETag");
  const doc = new DOMParser().parseFromString(await response.text(), "image/svg+xml");
  const svg = doc.documentElement;
  if (svg.nodeName !== "svg") return;
  plot.className = "plot";
  plot.replaceChildren(document.importNode(svg, true));
  plot.dataset.stem = stem;
}

async function showFigures() {
  const spectra = $("spectra-model").value;
  const jobs = [
    showFigure($("figure-emergence"), "emergence"),
    showFigure($("figure-alpha0-width"), "alpha0-width"),
  ];
  if (spectra) jobs.push(showFigure($("figure-spectra"), spectra));
  await Promise.all(jobs);
}

async function loadFigureList() {
  const response = await fetch("/api/figures", { cache: "no-store" });
  if (!response.ok) return;
  figureStems = await response.json();
  const select = $("spectra-model");
  for (const f of figureStems.filter((f) => f.stem.startsWith("spectra-"))) {
    const option = document.createElement("option");
    option.value = f.stem;
    option.textContent = f.title.replace(/^Spectra, /, "");
    select.appendChild(option);
  }
  select.addEventListener("change", () => {
    const plot = $("figure-spectra").querySelector(".plot");
    plot.className = "plot muted";
    text(plot, "drawing…");
    showFigure($("figure-spectra"), select.value);
  });
}

async function poll() {
  try {
    const headers = liveEtag ? { "If-None-Match": liveEtag } : {};
    const response = await fetch("/api/live", { headers, cache: "no-store" });
    if (response.status === 401) {
      text($("connection"), "the token was not accepted: open this page again with ?token=TOKEN");
      return;
    }
    if (response.ok) {
      liveEtag = response.headers.get("ETag");
      const view = await response.json();
      showSummary(view);
      view.models.forEach(drawGrid);
      showWorkers(view);
      showFetch(view);
      showFailures(view);
      text($("connection"), `updated ${new Date(view.generated_ms).toLocaleTimeString()}`);
      document.body.dataset.done = view.status.done;
      // The coordinator redraws a figure at most every few seconds: ask again until the
      // figures shown are of the latest results.
      const current = `"${view.figures_version}"`;
      const shown = ["emergence", "alpha0-width", $("spectra-model").value].filter(Boolean);
      if (shown.some((stem) => figureEtags[stem] !== current)) {
        await showFigures();
      }
    } else if (response.status !== 304) {
      text($("connection"), `the coordinator answered ${response.status}; retrying`);
    }
  } catch (e) {
    text($("connection"), `the coordinator cannot be reached (${e.message}); retrying`);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

loadFigureList().finally(poll);
