// Drives the coordinator's dashboard in headless Chromium as a person would, for
// tests/dashboard_e2e.rs:
//
//   node dashboard.mjs BASE_URL TOKEN SCREENSHOT_DIR
//
// 1. Without the token, and with a wrong one, the page shows only the login hint.
// 2. Opened with ?token=, it prints `READY <done>` once the page shows the sweep; the
//    test then starts the workers.
// 3. It watches what the page draws (the grids' pixels, the E figure's curves) until every
//    cell is drawn done and the E figure has a curve per model with a point per step,
//    taking a screenshot midway and one at the end, then prints `RESULT <json>`.
// Every wait is for something the page shows; the test bounds the whole run.
import { chromium } from "playwright-core";

const [base, token, shots] = process.argv.slice(2);
const executablePath = process.env.NEUROMFA_CHROMIUM || "/usr/bin/chromium";
const say = (line) => process.stdout.write(`${line}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// What the page has drawn: per grid, its size and how many cells show each state's colour
// (sampled at each cell's centre), and per model colour the longest E curve's points.
function drawn() {
  const colours = { done: [22, 163, 74], duplicate: [124, 58, 237], leased: [245, 158, 11] };
  const grids = [...document.querySelectorAll("#grids canvas")].map((canvas) => {
    const steps = +canvas.dataset.steps;
    const seeds = +canvas.dataset.seeds;
    const size = +canvas.dataset.cell;
    const top = +canvas.dataset.top;
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const counts = { done: 0, duplicate: 0, leased: 0, cells: steps * seeds };
    for (let r = 0; r < steps; r++) {
      for (let c = 0; c < seeds; c++) {
        const x = Math.floor(r * size + size / 2 - 0.5);
        const y = Math.floor(top + c * size + size / 2 - 0.5);
        const i = 4 * (y * canvas.width + x);
        for (const [state, [red, green, blue]] of Object.entries(colours)) {
          if (pixels[i] === red && pixels[i + 1] === green && pixels[i + 2] === blue) counts[state]++;
        }
      }
    }
    return counts;
  });
  // Model curves are drawn in matplotlib's tab10 order; a legend swatch has two points.
  const curves = {};
  for (const line of document.querySelectorAll("#figure-emergence svg polyline")) {
    const stroke = (line.getAttribute("stroke") || "").toLowerCase();
    const points = (line.getAttribute("points") || "").trim().split(/\s+/).filter(Boolean).length;
    if (["#1f77b4", "#ff7f0e"].includes(stroke)) curves[stroke] = Math.max(curves[stroke] || 0, points);
  }
  return { done: +document.body.dataset.done, grids, curves };
}

async function hintOnly(page, url) {
  const response = await page.goto(url);
  const body = await page.locator("body").innerText();
  return { status: response.status(), body };
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  const refused = [await hintOnly(page, base), await hintOnly(page, `${base}?token=not-the-token`)];

  await page.goto(`${base}?token=${encodeURIComponent(token)}`);
  await page.waitForFunction(() => document.body.dataset.done !== undefined);
  const landed = new URL(page.url()).search;
  say(`READY ${JSON.stringify({ done: (await page.evaluate(drawn)).done })}`);

  const seen = [];
  let midway = false;
  for (;;) {
    const now = await page.evaluate(drawn);
    seen.push(now.done);
    const total = now.grids.reduce((n, g) => n + g.cells, 0);
    const cellsDone = now.grids.reduce((n, g) => n + g.done + g.duplicate, 0);
    if (!midway && cellsDone >= total / 2 && Object.keys(now.curves).length > 0) {
      await page.screenshot({ path: `${shots}/dashboard-midway.png`, fullPage: true });
      midway = true;
    }
    const curvesDone = Object.keys(now.curves).length === now.grids.length;
    if (total > 0 && cellsDone === total && curvesDone) {
      // The E figure may lag the grid by a redraw; wait for its curves to reach every step.
      const stepsPerModel = await page.evaluate(() =>
        [...document.querySelectorAll("#grids canvas")].map((c) => +c.dataset.steps)
      );
      if (Object.values(now.curves).every((points) => points >= Math.max(...stepsPerModel))) {
        await page.screenshot({ path: `${shots}/dashboard-end.png`, fullPage: true });
        say(`RESULT ${JSON.stringify({ refused, landed, seen, final: now, stepsPerModel })}`);
        break;
      }
    }
    await sleep(200);
  }
} finally {
  await browser.close();
}
