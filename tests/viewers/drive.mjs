// Drive OHIF v3 in the system Chromium (playwright-core downloads no browser) and report
// what each visit drew. Usage: node drive.mjs JOB.json
//
// JOB.json: {baseUrl, query, outDir, chromium, visits: [{name, StudyInstanceUID, SeriesInstanceUID}]}
// (query: appended to each viewer URL, e.g. "&token=..." for a DICOMweb server asking for one)
// Writes outDir/report.json (a list, one object per visit, the fields of ohifkit.ViewerReport,
// plus sr_load_warnings and, for an SR loaded into OHIF's tools, `loaded`: what they drew)
// and outDir/<n>-<name>.png (for such an SR also <n>-<name>-sr.png, before loading). Each
// visit gets a fresh browser context; the page may reach nothing but 127.0.0.1 (anything
// else is refused and listed in blocked_requests).

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const VIEWPORT = { width: 1600, height: 1000 };
const VISIT_MS = 60_000; // the most one visit may take, all steps together
const FIRST_IMAGE_MS = 40_000; // page opened until an image is drawn (or it crashed)
const OPEN_SERIES_MS = 15_000; // double-click on a thumbnail until its series is active
const SETTLE_MS = 15_000; // until the network is quiet and the drawing stops changing
const QUIET_POLLS = 4; // ... for this many polls in a row
const POLL_MS = 250;
const SR_FIRST_DRAW_MS = 5_000; // an SR's annotations, before the window is nudged
const LOAD_SR_MS = 20_000; // "Yes" to OHIF's offer to load an SR until its panel rows show

// OHIF's ViewportDialog (the viewport's prompts): a focusable box with the message and its buttons.
const PROMPT = '[data-cy="viewport-pane"] div[tabindex="0"]:has(button)';

// Runs in the page: what is on screen now. OHIF exposes window.services and cornerstone.
function probe(PROMPT) {
  // OHIF's DisplaySetMessage.CODES, by number (the thumbnail's warning triangle)
  const codes = [
    '', 'NO_VALID_INSTANCES', 'NO_POSITION_INFORMATION', 'NOT_RECONSTRUCTABLE',
    'MULTIFRAME_NO_PIXEL_MEASUREMENTS', 'MULTIFRAME_NO_ORIENTATION',
    'MULTIFRAME_NO_POSITION_INFORMATION', 'MISSING_FRAMES', 'IRREGULAR_SPACING',
    'INCONSISTENT_DIMENSIONS', 'INCONSISTENT_COMPONENTS', 'INCONSISTENT_ORIENTATIONS',
    'INCONSISTENT_POSITION_INFORMATION', 'UNSUPPORTED_DISPLAYSET', 'UNSUPPORTED_SOP_CLASS_UID',
    'MISSING_SOP_CLASS_UID',
  ];
  const text = el => (el.textContent || '').replace(/\s+/g, ' ').trim();
  const services = window.services;
  const grid = services?.viewportGridService?.getState();
  const activeViewportId = grid?.activeViewportId;
  const displaySets = (services?.displaySetService?.getActiveDisplaySets() || []).map(ds => ({
    displaySetInstanceUID: ds.displaySetInstanceUID,
    SeriesInstanceUID: ds.SeriesInstanceUID,
    Modality: ds.Modality,
    unsupported: !!ds.unsupported,
    messages: (ds.messages?.messages || []).map(m => codes[m.id] || `${m.id}`),
  }));
  const active = grid?.viewports?.get?.(activeViewportId);
  const activeDisplaySetUIDs = active?.displaySetInstanceUIDs || [];
  const activeSeries = displaySets
    .filter(ds => activeDisplaySetUIDs.includes(ds.displaySetInstanceUID))
    .map(ds => ds.SeriesInstanceUID);

  // Each viewport pane; the active one is where the opened series is.
  const panes = [...document.querySelectorAll('[data-viewportid]')];
  const pane =
    panes.find(p => p.getAttribute('data-viewportid') === activeViewportId) || panes[0] || null;
  let viewportBox = null;
  if (pane) {
    const r = pane.getBoundingClientRect();
    viewportBox = [Math.round(r.x), Math.round(r.y), Math.round(r.width), Math.round(r.height)];
  }

  // An image is drawn when a viewport canvas holds a non-black pixel (cornerstone copies
  // each rendered frame into a 2D canvas per viewport).
  let rendered = false;
  for (const canvas of document.querySelectorAll('canvas.cornerstone-canvas')) {
    if (!canvas.width || !canvas.height) continue;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    if (!ctx) continue;
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 0; i < data.length; i += 4 * 97) {
      if (data[i] > 8 || data[i + 1] > 8 || data[i + 2] > 8) {
        rendered = true;
        break;
      }
    }
    if (rendered) break;
  }

  // What the tools drew: one <g data-annotation-uid> per labelled annotation, plus shapes.
  const svgs = [...document.querySelectorAll('svg.svg-layer')];
  const uids = new Set();
  const labels = [];
  let shapes = 0;
  for (const svg of svgs) {
    for (const g of svg.querySelectorAll('g[data-annotation-uid]')) {
      uids.add(g.getAttribute('data-annotation-uid'));
    }
    for (const t of svg.querySelectorAll('text')) {
      const lines = [...t.querySelectorAll('tspan')].map(text).filter(Boolean);
      labels.push(lines.length ? lines.join('\n') : text(t));
    }
    shapes += [...svg.querySelectorAll('polyline, path, line, rect, circle, ellipse')].filter(
      el => !el.closest('g[data-annotation-uid]')
    ).length;
  }

  // A coarse signature of what the viewport canvases show, so that settling waits until
  // the drawing itself stops changing (an overlay can arrive after the network is quiet).
  let signature = 0;
  for (const canvas of document.querySelectorAll('canvas.cornerstone-canvas')) {
    if (!canvas.width || !canvas.height) continue;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    if (!ctx) continue;
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 0; i < data.length; i += 4 * 101) {
      signature = (signature * 31 + data[i] + 3 * data[i + 1] + 7 * data[i + 2]) % 1000000007;
    }
  }
  // The segments OHIF holds, by label: a SEG's, from its preview overlay on.
  let segments = [];
  try {
    segments = (services?.segmentationService?.getSegmentations() || []).flatMap(s =>
      Object.values(s.segments || {})
        .filter(Boolean)
        .map(segment => String(segment.label))
    );
  } catch {
    segments = [];
  }
  // The measurement / segmentation panel's rows, each by its title (a measurement's label).
  const panelItems = [...document.querySelectorAll('[data-cy="data-row"]')].map(row =>
    text(row.querySelector('[data-cy="data-row-title"]') ?? row)
  );
  // Toasts as "<type>: title / message"; viewport prompts (hydrate SR/SEG), dialogs, tours.
  const lines = el => (el.innerText || el.textContent || '').split('\n').map(l => l.trim());
  const said = el => lines(el).filter(Boolean).join(' / ');
  const notices = [
    ...[...document.querySelectorAll('[data-sonner-toast]')].map(
      el => `${el.getAttribute('data-type') || 'toast'}: ${said(el)}`
    ),
    ...[...document.querySelectorAll(PROMPT)].map(
      el => `prompt: ${said(el)}`
    ),
    ...[...document.querySelectorAll('[role="dialog"], [role="alertdialog"]')].map(
      el => `dialog: ${said(el)}`
    ),
    ...[...document.querySelectorAll('.shepherd-element')].map(el => `tour: ${said(el)}`),
  ].filter(n => !/: $/.test(n));
  const body = document.body ? document.body.innerText : '';
  return {
    ready: !!services,
    rendered,
    displaySets,
    activeSeries,
    viewportBox,
    annotations: uids.size,
    shapes,
    labels,
    panelItems,
    notices,
    errorText: /Something went wrong/i.test(body),
    signature,
    segments,
  };
}

const browser = await chromium.launch({
  executablePath: job.chromium || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-dev-shm-usage',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    // WebGL without a GPU (cornerstone3D renders with WebGL).
    '--use-angle=swiftshader',
    '--enable-unsafe-swiftshader',
    '--ignore-gpu-blocklist',
  ],
});

async function visit(index, v) {
  const report = {
    name: v.name,
    url: `${job.baseUrl}/viewer?StudyInstanceUIDs=${encodeURIComponent(v.StudyInstanceUID)}${job.query ?? ''}`,
    screenshot: join(job.outDir, `${index + 1}-${v.name.replace(/[^A-Za-z0-9_.-]+/g, '_')}.png`),
    rendered: false,
    series_opened: false,
    page_errors: [],
    console_errors: [],
    sr_load_warnings: [],
    error_boundary: false,
    boundary_errors: [],
    annotations: 0,
    shapes: 0,
    labels: [],
    panel_items: [],
    segment_labels: [],
    notices: [],
    viewport_box: null,
    blocked_requests: [],
    failed_requests: [],
    timed_out: false,
    unsupported: false,
    series_messages: [],
    steps: [],
  };
  const context = await browser.newContext({ viewport: VIEWPORT, serviceWorkers: 'block' });
  let inflight = 0;
  await context.route('**/*', route => {
    const url = route.request().url();
    if (new URL(url).hostname === '127.0.0.1') return route.continue();
    report.blocked_requests.push(url);
    return route.abort('blockedbyclient');
  });
  // OHIF's first-visit tour would cover the viewport and swallow the double-clicks.
  await context.addInitScript(() => {
    localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
  });
  const page = await context.newPage();
  page.on('pageerror', e => report.page_errors.push(String(e.stack || e.message || e)));
  const pending = []; // console arguments still being read
  page.on('console', m => {
    const t = m.text();
    if (m.type() === 'error') report.console_errors.push(t);
    // OHIF's SR loading skips what its tools cannot take, saying so only on the console.
    if (/Unable to generate tool state|not rehydratable|No measurements found/.test(t)) {
      report.sr_load_warnings.push(t.slice(0, 300));
    }
    if (/Error Boundary/.test(t)) {
      // OHIF logs console.debug(`${context} Error Boundary`, error, componentStack, context)
      report.error_boundary = true;
      const read = m.args()[1]?.evaluate(e => String((e && (e.stack || e.message)) || e));
      const where = t.split(' Error Boundary')[0];
      pending.push(
        Promise.resolve(read)
          .catch(() => null)
          .then(error => report.boundary_errors.push(`${where}: ${error || t}`))
      );
    }
  });
  page.on('request', () => inflight++);
  page.on('requestfinished', () => inflight--);
  page.on('requestfailed', r => {
    inflight--;
    if (new URL(r.url()).hostname === '127.0.0.1') {
      report.failed_requests.push(`${r.url()} ${r.failure()?.errorText}`);
    }
  });
  page.on('response', r => {
    if (r.status() >= 400) report.failed_requests.push(`${r.url()} HTTP ${r.status()}`);
  });
  const crashed = () => report.page_errors.length > 0 || report.error_boundary;
  const visitDeadline = Date.now() + VISIT_MS;
  const notices = new Set(); // every notice seen, as toasts come and go

  // Resize the window by a pixel and back: OHIF renders the viewport again.
  async function nudge() {
    await page.setViewportSize({ width: VIEWPORT.width - 1, height: VIEWPORT.height });
    await page.waitForTimeout(POLL_MS);
    await page.setViewportSize(VIEWPORT);
    report.steps.push('window resized');
  }

  async function look() {
    const snap = await page.evaluate(probe, PROMPT).catch(() => null);
    snap?.notices.forEach(n => notices.add(n));
    return snap;
  }

  // Poll the page until `done(snapshot)`, a crash, or the time is up.
  async function until(what, ms, done) {
    const deadline = Math.min(Date.now() + ms, visitDeadline);
    let snap = null;
    while (Date.now() < deadline) {
      snap = await look();
      if (snap && (done(snap) || snap.errorText || crashed())) {
        report.steps.push(`${what}: ${done(snap) ? 'yes' : 'crashed'}`);
        return snap;
      }
      await page.waitForTimeout(POLL_MS);
    }
    report.steps.push(`${what}: timed out`);
    report.timed_out = true;
    return snap;
  }

  // Poll until `done(snapshot)` or a crash, at most `ms`: the last snapshot (a wait that may
  // end either way, unlike until()).
  async function poll(ms, done) {
    const deadline = Math.min(Date.now() + ms, visitDeadline);
    let snap = null;
    while (Date.now() < deadline) {
      snap = (await look()) || snap;
      if ((snap && done(snap)) || crashed()) break;
      await page.waitForTimeout(POLL_MS);
    }
    return snap;
  }

  // Network quiet and the snapshot unchanged for QUIET_POLLS polls in a row.
  async function settle(snap) {
    const deadline = Math.min(Date.now() + SETTLE_MS, visitDeadline);
    let last = '';
    let quiet = 0;
    while (quiet < QUIET_POLLS && !crashed() && Date.now() < deadline) {
      await page.waitForTimeout(POLL_MS);
      snap = (await look()) || snap;
      const key = JSON.stringify(snap);
      quiet = inflight === 0 && key === last ? quiet + 1 : 0;
      last = key;
    }
    report.steps.push(quiet >= QUIET_POLLS ? 'settled' : 'settle: timed out');
    if (quiet < QUIET_POLLS && !crashed()) report.timed_out = true;
    return snap;
  }

  let srDrawing = null; // what an SR drew before it was loaded into OHIF's tools
  try {
    await page.goto(report.url, { waitUntil: 'load', timeout: FIRST_IMAGE_MS });
    let snap = await until('first image', FIRST_IMAGE_MS, s => s.rendered);
    if (v.SeriesInstanceUID && snap && !crashed()) {
      const ds = snap.displaySets.find(d => d.SeriesInstanceUID === v.SeriesInstanceUID);
      if (!ds) {
        report.steps.push(`series ${v.SeriesInstanceUID}: no display set`);
      } else if (!snap.activeSeries.includes(v.SeriesInstanceUID)) {
        report.unsupported = ds.unsupported;
        report.series_messages = ds.messages;
        const thumbnail = page.locator(`[id="thumbnail-${ds.displaySetInstanceUID}"]`);
        await thumbnail.dblclick({ timeout: OPEN_SERIES_MS });
        // OHIF refuses to open a display set it marked unsupported: nothing to wait for.
        if (!ds.unsupported) {
          snap = await until('series opened', OPEN_SERIES_MS, s =>
            s.activeSeries.includes(v.SeriesInstanceUID)
          );
        }
      }
      // An SR's annotations come some time after its series opens, later under load: a
      // quiet second can pass before them (seen in CI). And like a parametric map's fusion
      // (below), OHIF 3.13.2 sometimes draws them only at the viewport's next render: after
      // a few seconds without them, resize the window by a pixel and back, as a user might.
      // Every SR under test draws some.
      if (ds?.Modality === 'SR' && !ds.unsupported && !crashed()) {
        const first = Math.min(Date.now() + SR_FIRST_DRAW_MS, visitDeadline);
        while (Date.now() < first && !(snap?.annotations > 0) && !crashed()) {
          await page.waitForTimeout(POLL_MS);
          snap = (await look()) || snap;
        }
        if (!(snap?.annotations > 0) && !crashed()) {
          await nudge();
        }
        snap = await until('annotations drawn', SETTLE_MS, s => s.annotations > 0);
      }
    }
    // Settle: network quiet and the drawing unchanged for QUIET_POLLS polls in a row.
    const deadline = Math.min(Date.now() + SETTLE_MS, visitDeadline);
    let last = '';
    let quiet = 0;
    while (quiet < QUIET_POLLS && !crashed()) {
      if (Date.now() > deadline) {
        report.steps.push('settle: timed out');
        report.timed_out = true;
        break;
      }
      await page.waitForTimeout(POLL_MS);
      snap = (await look()) || snap;
      const key = JSON.stringify(snap);
      quiet = inflight === 0 && key === last ? quiet + 1 : 0;
      last = key;
    }
    if (quiet >= QUIET_POLLS) report.steps.push('settled');
    // OHIF 3.13.2 draws a parametric map's colour fusion only at the viewport's next render,
    // which on a cold first load may never come by itself (a second visit shows it at
    // once): resize the window by a pixel and back, as a user might, and settle again.
    const opened = snap?.displaySets.find(d => d.SeriesInstanceUID === v.SeriesInstanceUID);
    if (opened?.Modality === 'PMAP' && snap.activeSeries.includes(v.SeriesInstanceUID)) {
      await nudge();
      const again = Math.min(Date.now() + SETTLE_MS, visitDeadline);
      quiet = 0;
      while (quiet < QUIET_POLLS && !crashed() && Date.now() < again) {
        await page.waitForTimeout(POLL_MS);
        snap = (await look()) || snap;
        const key = JSON.stringify(snap);
        quiet = inflight === 0 && key === last ? quiet + 1 : 0;
        last = key;
      }
      report.steps.push(quiet >= QUIET_POLLS ? 'settled' : 'settle: timed out');
      if (quiet < QUIET_POLLS) report.timed_out = true;
    }
    // An SR whose measurements OHIF's own tools can take over comes with the viewport prompt
    // "Do you want to continue tracking measurements for this study?". A user who wants them
    // in the measurement panel answers Yes: OHIF re-creates each measurement as a tool
    // annotation on the film and lists it in the panel by its label. What the SR itself drew
    // (annotations, labels) is kept as the visit's drawing and in <n>-<name>-sr.png; then
    // Yes, the panel opened if it did not open by itself, and settled again: the screenshot
    // shows the loaded measurements and the panel, whose rows are panel_items.
    if (opened?.Modality === 'SR' && snap?.activeSeries.includes(v.SeriesInstanceUID) && !crashed()) {
      const yes = page.locator(PROMPT).getByRole('button', { name: 'Yes', exact: true });
      if ((await yes.count()) > 0) {
        srDrawing = snap;
        await page.screenshot({ path: report.screenshot.replace(/\.png$/, '-sr.png') });
        await yes.first().click({ timeout: OPEN_SERIES_MS });
        report.steps.push('SR load offered: yes');
        const loadDeadline = Math.min(Date.now() + LOAD_SR_MS, visitDeadline);
        const listed = s => s.panelItems.length > 0;
        snap = (await poll(Math.min(LOAD_SR_MS / 2, loadDeadline - Date.now()), listed)) || snap;
        if (!listed(snap) && !crashed()) {
          await page.locator('[data-cy="trackedMeasurements-btn"]').first().click({ timeout: 5_000 });
          report.steps.push('measurement panel opened');
        }
        snap = (await poll(loadDeadline - Date.now(), listed)) || snap;
        report.steps.push(`measurements listed: ${listed(snap) ? 'yes' : 'no'}`);
        snap = await settle(snap);
      } else {
        report.steps.push('SR load offered: no');
      }
    }
    if (crashed()) report.steps.push('crashed');
    if (snap) {
      // A loaded SR's measurements are drawn on the film's own display set: whether the SR
      // opened, and what it drew, is what its viewport showed before it was loaded.
      const drawing = srDrawing || snap;
      report.rendered = snap.rendered;
      report.series_opened = v.SeriesInstanceUID
        ? drawing.activeSeries.includes(v.SeriesInstanceUID)
        : snap.rendered;
      report.annotations = drawing.annotations;
      report.shapes = drawing.shapes;
      report.labels = drawing.labels;
      if (srDrawing) {
        report.loaded = { annotations: snap.annotations, labels: snap.labels };
      }
      report.panel_items = snap.panelItems;
      report.segment_labels = snap.segments;
      report.viewport_box = snap.viewportBox;
      report.error_boundary = report.error_boundary || snap.errorText;
      report.display_sets = snap.displaySets;
    }
  } catch (e) {
    report.steps.push(`driver: ${e.message.split('\n')[0]}`);
    report.timed_out = true;
  }
  await page.screenshot({ path: report.screenshot }).catch(e => {
    report.steps.push(`screenshot: ${e.message.split('\n')[0]}`);
  });
  await look();
  report.notices = [...notices];
  await Promise.all(pending);
  await context.close();
  return report;
}

const reports = [];
try {
  for (const [index, v] of job.visits.entries()) {
    const started = Date.now();
    const report = await visit(index, v);
    report.seconds = (Date.now() - started) / 1000;
    reports.push(report);
    console.log(`${v.name}: ${report.steps.join('; ')} (${report.seconds.toFixed(1)} s)`);
  }
} finally {
  await browser.close();
}
writeFileSync(join(job.outDir, 'report.json'), JSON.stringify(reports, null, 2));
