// Drive the node's review page in the system Chromium (playwright-core downloads no
// browser): log in, open the study from the worklist, check the film is drawn, replay the
// trajectory, reject a finding, add one by drawing a box, sign. Usage: node review.mjs JOB.json
//
// JOB.json: {baseUrl, name, password, key, addLabel, trajectoryLength, outDir, chromium, sign,
// monochrome1Key} (monochrome1Key: a second study, opened last, whose film is MONOCHROME1)
// Writes outDir/report.json (what each step saw) and outDir/NN-<step>.png. The page may
// reach nothing but 127.0.0.1 (anything else is refused and listed in blocked_requests).

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const VIEWPORT = { width: 1600, height: 1000 };
const STEP_MS = 30_000; // the most one step may wait for the page
const SPEED = 8; // replay speed while the test watches it
const SAMPLE_MS = 150;

const report = {
  blocked_requests: [],
  console_errors: [],
  page_errors: [],
  steps: [],
};
const save = () => writeFileSync(join(job.outDir, 'report.json'), JSON.stringify(report, null, 2));
let shot = 0;
async function screenshot(page, name) {
  shot += 1;
  const file = `${String(shot).padStart(2, '0')}-${name}.png`;
  await page.screenshot({ path: join(job.outDir, file) });
  return file;
}

// Runs in the page: is there a non-black pixel in the film's canvas, and its spread.
function filmPixels() {
  const canvas = document.querySelector('#film canvas.cornerstone-canvas') || document.querySelector('#film canvas');
  if (!canvas || !canvas.width) return { canvas: false, lit: 0, distinct: 0 };
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0;
  const values = new Set();
  for (let i = 0; i < data.length; i += 4 * 53) {
    if (data[i] > 8) lit += 1;
    values.add(data[i]);
  }
  return { canvas: true, width: canvas.width, height: canvas.height, lit, distinct: values.size };
}

// Runs in the page: the film canvas as a 16 x 16 grid of mean grey levels.
function filmGrid() {
  const canvas = document.querySelector('#film canvas.cornerstone-canvas') || document.querySelector('#film canvas');
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const { width, height } = canvas;
  const data = ctx.getImageData(0, 0, width, height).data;
  const n = 16;
  const grid = [];
  for (let r = 0; r < n; r += 1) {
    for (let c = 0; c < n; c += 1) {
      let sum = 0;
      let count = 0;
      for (let y = Math.floor((r * height) / n); y < ((r + 1) * height) / n; y += 3) {
        for (let x = Math.floor((c * width) / n); x < ((c + 1) * width) / n; x += 3) {
          sum += data[4 * (y * width + x)];
          count += 1;
        }
      }
      grid.push(count ? sum / count : 0);
    }
  }
  return grid;
}

async function openFilm(page) {
  await page.waitForSelector('#film[data-ready=true]');
  let pixels = await page.evaluate(filmPixels);
  for (let i = 0; i < 50 && pixels.lit === 0; i += 1) {
    await page.waitForTimeout(200);
    pixels = await page.evaluate(filmPixels);
  }
  const photometric = await page.getAttribute('#film', 'data-photometric');
  return { pixels, photometric, grid: await page.evaluate(filmGrid) };
}

function replayState() {
  const rings = [...document.querySelectorAll('#film svg.overlay g.fixation')];
  return {
    indexes: rings.map(g => Number(g.dataset.index)),
    steps: rings.map(g => g.dataset.step),
    current: document.querySelector('#step-bar li.current')?.dataset.step ?? null,
    playing: document.querySelector('#play')?.textContent === 'Pause',
    clock: document.querySelector('.clock')?.textContent ?? '',
  };
}

async function step(name, fn) {
  const entry = { name, ok: false };
  report.steps.push(entry);
  try {
    Object.assign(entry, await fn());
    entry.ok = true;
  } catch (error) {
    entry.error = String(error?.stack || error);
    throw error;
  } finally {
    save();
  }
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
let failed = false;
try {
  const context = await browser.newContext({ viewport: VIEWPORT });
  await context.route('**/*', route => {
    const url = route.request().url();
    if (url.startsWith('http://127.0.0.1')) return route.continue();
    report.blocked_requests.push(url);
    return route.abort('blockedbyclient');
  });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on('console', m => m.type() === 'error' && report.console_errors.push(m.text()));
  page.on('pageerror', e => report.page_errors.push(String(e?.stack || e)));

  await step('login', async () => {
    await page.goto(`${job.baseUrl}/review/`);
    const login_url = new URL(page.url()).pathname;
    await page.fill('#name', job.name);
    await page.fill('#password', job.password);
    await Promise.all([page.waitForURL(`${job.baseUrl}/review/`), page.click('button[type=submit]')]);
    return { login_url };
  });

  await step('worklist', async () => {
    await page.waitForSelector('#worklist tr.study');
    const rows = await page.$$eval('#worklist tr.study', trs =>
      trs.map(tr => ({
        key: tr.dataset.key,
        state: tr.dataset.state,
        critical: !!tr.querySelector('.badge.critical'),
        text: tr.textContent.replace(/\s+/g, ' ').trim(),
      }))
    );
    return { rows, screenshot: await screenshot(page, 'worklist') };
  });

  await step('open', async () => {
    const started = Date.now();
    await Promise.all([page.waitForURL(`**/review/studies/${job.key}`), page.click(`#worklist tr[data-key="${job.key}"]`)]);
    const film = await openFilm(page);
    const notices = await page.$$eval('.notices p', ps => ps.map(p => p.textContent));
    const findings = await page.$$eval('li.finding', lis => lis.map(li => ({ id: li.dataset.finding, present: li.classList.contains('present') })));
    return { ms: Date.now() - started, ...film, notices, findings, screenshot: await screenshot(page, 'study') };
  });

  await step('display', async () => {
    const signature = () => page.evaluate(filmPixels);
    const before = await signature();
    await page.selectOption('#voi', 'lung');
    await page.waitForTimeout(300);
    const lung = await signature();
    const lung_grid = await page.evaluate(filmGrid);
    await page.selectOption('#voi', 'default');
    await page.check('#heatmap');
    const heatmap_cells = await page.$$eval('#film svg.overlay g.heatmap rect', r => r.length);
    const heatmap_shot = await screenshot(page, 'heatmap');
    await page.uncheck('#heatmap');
    // the overlay follows zoom: a box's on-screen size grows with the wheel
    const boxWidth = () => page.$eval('#film svg.overlay g.box rect.frame', r => Number(r.getAttribute('width')));
    const width_before = await boxWidth();
    const film = await page.locator('#film').boundingBox();
    await page.mouse.move(film.x + film.width / 2, film.y + film.height / 2);
    for (let i = 0; i < 3; i += 1) {
      await page.mouse.wheel(0, -200);
      await page.waitForTimeout(150);
    }
    await page.waitForTimeout(300);
    const width_zoomed = await boxWidth();
    await page.click('#reset');
    // a sentence of the report lights its finding, and the finding its sentence
    const sentence = page.locator('.sentence[data-findings]:not([data-findings=""])').first();
    const linked = (await sentence.getAttribute('data-findings')).split(' ')[0];
    await sentence.hover();
    const finding_lit = await page.$eval(`li.finding[data-finding="${linked}"]`, li => li.classList.contains('highlighted'));
    const rings_lit = await page.$$eval('#film svg.overlay g.fixation.highlighted', g => g.length);
    await page.mouse.move(5, 5);
    await page.hover(`li.finding[data-finding="${linked}"] .meaning`);
    const sentence_lit = await sentence.evaluate(s => s.classList.contains('highlighted'));
    await page.mouse.move(5, 5);
    return {
      lung_changed: lung.lit !== before.lit || lung.distinct !== before.distinct,
      before,
      lung,
      lung_grid,
      heatmap_cells,
      heatmap_shot,
      width_before,
      width_zoomed,
      linked,
      finding_lit,
      rings_lit,
      sentence_lit,
    };
  });

  await step('replay', async () => {
    const total = await page.$$eval('#film svg.overlay g.fixation', g => g.length); // the whole path
    await page.selectOption('#speed', String(SPEED));
    await page.click('#play');
    const samples = [];
    let mid = null;
    for (let i = 0; i < 400; i += 1) {
      const state = await page.evaluate(replayState);
      samples.push({ count: state.indexes.length, current: state.current, indexes: state.indexes, steps: state.steps });
      if (!mid && state.playing && state.indexes.length >= Math.ceil(job.trajectoryLength / 2)) {
        mid = await screenshot(page, 'replay-mid');
      }
      if (!state.playing && i > 2) break;
      await page.waitForTimeout(SAMPLE_MS);
    }
    const counts = samples.map(s => s.count);
    const currents = samples.map(s => s.current);
    return { total_before_play: total, counts, currents, last: samples.at(-1), screenshot: mid };
  });

  await step('reject', async () => {
    const first = page.locator('li.finding.present').first();
    const id = await first.getAttribute('data-finding');
    await first.locator('button[data-decision=reject]').click();
    const row = page.locator(`li.finding[data-finding="${id}"]`);
    const reason = await row.locator('select.reason option').nth(1).getAttribute('value');
    await row.locator('select.reason').selectOption(reason);
    const classes = await page.getAttribute(`li.finding[data-finding="${id}"]`, 'class');
    const box = await page.getAttribute(`#film svg.overlay g.box[data-id="${id}"]`, 'class').catch(() => null);
    return { finding: id, reason, classes, box_classes: box, screenshot: await screenshot(page, 'rejected') };
  });

  await step('correct', async () => {
    const row = page.locator('li.finding.present:not(.reject)').first();
    const id = await row.getAttribute('data-finding');
    await row.locator('button[data-decision=correct]').click();
    const frame = `#film svg.overlay g.box[data-id="${id}"] rect.frame`;
    const size = () => page.$eval(frame, r => [Number(r.getAttribute('width')), Number(r.getAttribute('height'))]);
    const before = await size();
    const handle = await page.locator(`#film svg.overlay circle.handle[data-id="${id}"][data-corner="x1y1"]`).boundingBox();
    const x = handle.x + handle.width / 2;
    const y = handle.y + handle.height / 2;
    await page.mouse.move(x, y);
    await page.mouse.down();
    await page.mouse.move(x + 20, y + 15, { steps: 4 });
    await page.mouse.move(x + 40, y + 30, { steps: 4 });
    await page.mouse.up();
    const after = await size();
    return { finding: id, before, after, screenshot: await screenshot(page, 'corrected') };
  });

  await step('accept-rest', async () => {
    const ids = await page.$$eval('li.finding.present:not(.reject):not(.correct)', lis => lis.map(li => li.dataset.finding));
    for (const id of ids) await page.click(`li.finding[data-finding="${id}"] button[data-decision=accept]`);
    return { accepted: ids };
  });

  await step('add', async () => {
    await page.click('#add-finding');
    const film = await page.locator('#film').boundingBox();
    const x = film.x + film.width * 0.62;
    const y = film.y + film.height * 0.55;
    await page.mouse.move(x, y);
    await page.mouse.down();
    await page.mouse.move(x + 40, y + 30, { steps: 5 });
    await page.mouse.move(x + 80, y + 60, { steps: 5 });
    await page.mouse.up();
    await page.selectOption('#added-label', job.addLabel);
    await page.click('#add-confirm');
    const added = await page.$$eval('#added li', lis => lis.map(li => li.textContent));
    const drawn = await page.$$eval('#film svg.overlay g.box.added', gs => gs.length);
    return { added, drawn, screenshot: await screenshot(page, 'added') };
  });

  if (job.sign) {
    await step('sign', async () => {
      const enabled = await page.isEnabled('#sign');
      await Promise.all([page.waitForEvent('load', { timeout: 90_000 }), page.click('#sign')]);
      await page.waitForSelector('section.study[data-state=signed]', { timeout: STEP_MS });
      await page.waitForSelector('#film[data-ready=true]');
      await page.waitForTimeout(500);
      const history = await page.$$eval('#history li, #history .signed-by', els => els.map(e => e.textContent));
      const controls = await page.$$eval('button.decide, #sign', bs => bs.length);
      return { enabled, history, controls, screenshot: await screenshot(page, 'signed') };
    });
  }
  if (job.monochrome1Key) {
    await step('monochrome1', async () => {
      await page.goto(`${job.baseUrl}/review/studies/${job.monochrome1Key}`);
      const film = await openFilm(page);
      const shot = await screenshot(page, 'monochrome1');
      await page.selectOption('#voi', 'lung');
      await page.waitForTimeout(300);
      return { ...film, lung_grid: await page.evaluate(filmGrid), screenshot: shot };
    });
  }
} catch (error) {
  failed = true;
  report.error = String(error?.stack || error);
  const [page] = browser.contexts().flatMap(c => c.pages());
  if (page) report.failure_screenshot = await screenshot(page, 'failure').catch(() => null);
} finally {
  save();
  await browser.close();
}
process.exit(failed ? 1 : 0);
