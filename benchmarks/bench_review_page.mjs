// Driver of bench_review_page.py: opens one study of the review page again and again in the
// system Chromium and reads the page's own Performance API marks. Usage:
//   node bench_review_page.mjs JOB.json   (JOB: {baseUrl, name, password, key, rounds, chromium})
// Prints one JSON object: {from_worklist: [...], new_tab: [...]}, each sample {film, trajectory, frame}
// in ms from the study page's navigation start (frame: the WADO-RS frame fetched alone, in
// the same page, after it settled: the network floor the film cannot beat).

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const viewers = join(dirname(fileURLToPath(import.meta.url)), '..', 'tests', 'viewers');
const { chromium } = await import(join(viewers, 'node_modules', 'playwright-core', 'index.mjs'));
const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));

async function login(context) {
  const page = await context.newPage();
  await page.goto(`${job.baseUrl}/review/login`);
  await page.fill('#name', job.name);
  await page.fill('#password', job.password);
  await Promise.all([page.waitForURL(`${job.baseUrl}/review/`), page.click('button[type=submit]')]);
  return page;
}

async function sample(page) {
  await page.goto(`${job.baseUrl}/review/studies/${job.key}`);
  await page.waitForFunction(() => performance.getEntriesByName('gazex:trajectory-ready').length > 0, null, {
    timeout: 60_000,
  });
  return page.evaluate(async () => {
    const at = name => performance.getEntriesByName(name)[0].startTime;
    const detail = await (await fetch(window.location.pathname.replace('/studies/', '/api/studies/'))).json();
    const i = detail.image;
    const url = `${detail.wado_root}/studies/${i.StudyInstanceUID}/series/${i.SeriesInstanceUID}/instances/${i.SOPInstanceUID}/frames/1`;
    const start = performance.now();
    const response = await fetch(url, { headers: { accept: 'multipart/related; type="application/octet-stream"; transfer-syntax=*' } });
    await response.arrayBuffer();
    return { film: at('gazex:film-displayed'), trajectory: at('gazex:trajectory-ready'), frame: performance.now() - start };
  });
}

const browser = await chromium.launch({
  executablePath: job.chromium || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--ignore-gpu-blocklist'],
});
const out = { from_worklist: [], new_tab: [] };
try {
  for (let round = 0; round < job.rounds; round += 1) {
    const context = await browser.newContext({ viewport: { width: 1600, height: 1000 } });
    const page = await login(context);
    // the tab that logged in and showed the worklist (the same app) opens the study
    out.from_worklist.push(await sample(page));
    await page.close();
    // a new tab of the same profile: scripts cached, but a new renderer, WebGL context and workers
    out.new_tab.push(await sample(await context.newPage()));
    await context.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
