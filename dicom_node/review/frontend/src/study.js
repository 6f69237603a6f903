// The study view: notices first (out of domain, steps not inspected), the film with its
// overlay and the trajectory replay, the findings with the decisions, the linked report,
// and Sign; a signed study opens read-only with its history.
import { sign, study as fetchStudy } from './api.js';
import { Decisions } from './decisions.js';
import { h } from './dom.js';
import { Film } from './film.js';
import { findingList } from './findings.js';
import { Overlay } from './overlay.js';
import { Replay, timing } from './replay.js';
import { findingId, reportElement, reportLinks } from './report.js';
import { stepColour, stepName } from './steps.js';

const POLL_MS = 1000;
const POLL_LIMIT_MS = 120_000;
const PRESETS = [
  ['default', 'Default (header)'],
  ['lung', 'Lung'],
  ['soft', 'Soft tissue'],
  ['bone', 'Bone'],
  ['full', 'Full range'],
];

function outOfDomain(detail) {
  const domain = detail.result?.domain ?? {};
  return detail.state === 'out_of_domain' || domain.out_of_domain === true || domain.in_domain === false;
}

function notices(detail) {
  const result = detail.result ?? {};
  const items = [];
  if (outOfDomain(detail)) {
    const domain = result.domain ?? {};
    const score = domain.score != null ? ` (score ${domain.score} over the threshold ${domain.threshold})` : '';
    items.push(
      h(
        'p.notice.out-of-domain#out-of-domain',
        { role: 'alert' },
        domain.notice ?? `This film lies outside the model's training domain${score}: its findings are withheld.`
      )
    );
  }
  const skipped = Object.entries(result.coverage ?? {}).filter(([, seen]) => !seen).map(([step]) => step);
  if (skipped.length) {
    items.push(
      h(
        'p.notice.not-inspected#not-inspected',
        { role: 'alert' },
        `Not inspected by the model: ${skipped.map(s => `${s} (${stepName(s)})`).join(', ')}.`
      )
    );
  }
  if (detail.state === 'failed') items.push(h('p.notice.failed', { role: 'alert' }, 'The analysis of this study failed.'));
  const model = result.model;
  if (model) {
    items.push(
      h(
        'p.model',
        null,
        `Model ${model.name} ${model.version}`,
        model.trained_on_synthetic_data ? ' — trained on synthetic data; research use only, not for clinical use.' : ''
      )
    );
  }
  return h('div.notices', null, items);
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '';
}

function historyElement(detail) {
  const review = detail.review;
  const entries = detail.history ?? [];
  return h(
    'section.history#history',
    null,
    h('h2', null, 'Signed'),
    review ? h('p.signed-by', null, `Revision ${review.revision}, signed by ${review.signed_by} on ${when(review.signed_at)}`) : null,
    h('h3', null, 'History'),
    h(
      'ol',
      null,
      entries.map(entry =>
        h(
          'li',
          { dataset: { state: entry.state } },
          `Revision ${entry.revision}: ${entry.signed_by} (${entry.role}), ${when(entry.signed_at)}, ${entry.state}`,
          entry.changes?.length ? h('ul', null, entry.changes.map(c => h('li', null, c))) : h('div.hint', null, 'accepted as drafted'),
          entry.error ? h('div.error', null, entry.error) : null
        )
      )
    )
  );
}

export async function showStudy(app, key) {
  document.title = 'Study · GazeX Node review';
  app.replaceChildren(h('p.loading', null, 'Loading the study…'));
  const detail = await fetchStudy(key);
  new StudyView(app, detail).start();
}

class StudyView {
  constructor(app, detail) {
    this.app = app;
    this.detail = detail;
    this.result = detail.result ?? {};
    this.readOnly = detail.state !== 'awaiting_review';
    this.withheld = outOfDomain(detail);
    this.findings = this.withheld ? [] : this.result.findings ?? [];
    this.trajectory = this.result.trajectory ?? [];
    this.links = reportLinks({ ...this.result, findings: this.findings });
    this.decisions = new Decisions();
    this.shown = new Set(this.findings.filter(f => f.present && f.box).map(findingId));
    this.highlight = { key: null, findings: new Set(), fixations: new Set() };
    this.heatmap = false;
    this.drawing = false;
    this.pendingBox = null;
    this.time = 0;
    if (detail.review) this.loadReview(detail.review);
  }

  loadReview(review) {
    for (const d of review.decisions ?? []) this.decisions.set(d.finding, { ...d });
    for (const a of review.added ?? []) this.decisions.add(a.finding, a.box);
  }

  get rows() {
    return this.detail.image?.Rows ?? this.result.source?.Rows;
  }

  get columns() {
    return this.detail.image?.Columns ?? this.result.source?.Columns;
  }

  async start() {
    const detail = this.detail;
    this.viewportElement = h('div.viewport#film', { 'data-testid': 'film' });
    this.side = h('aside.side');
    this.replay = new Replay(this.trajectory, time => {
      this.time = time;
      this.drawOverlay();
    });
    this.app.replaceChildren(
      h(
        'section.study',
        { dataset: { state: detail.state } },
        notices(detail),
        h(
          'div.head',
          null,
          h('h1', null, `Accession ${detail.accession ?? '—'}`),
          h('span', null, detail.study_date ?? ''),
          h('span', { class: `state ${detail.state}` }, detail.state.replaceAll('_', ' '))
        ),
        h('div.layout', null, h('div.left', null, this.toolbar(), this.viewportElement, this.replay.element), this.side)
      )
    );
    this.renderSide();
    this.film = await Film.open(this.viewportElement, detail.wado_root, detail.image);
    this.overlay = new Overlay(this.film, {
      fixationHover: index => this.hoverFixation(index),
      fixationClick: index => this.replay.seek(timing(this.trajectory[index]).start),
      boxClick: id => this.hoverFinding(id),
      boxChanged: (id, box) => this.boxChanged(id, box),
      boxDrawn: box => this.boxDrawn(box),
    });
    this.viewportElement.dataset.ready = 'true';
    this.viewportElement.dataset.photometric = this.film.photometricInterpretation ?? '';
    performance.mark('gazex:film-displayed');
    this.drawOverlay();
    performance.mark('gazex:trajectory-ready');
  }

  toolbar() {
    const preset = h(
      'select#voi',
      { 'aria-label': 'Window preset', on: { change: e => this.film?.setPreset(e.target.value) } },
      PRESETS.map(([value, label]) => h('option', { value }, label))
    );
    const heatmap = h('input#heatmap', {
      type: 'checkbox',
      disabled: !this.result.attention,
      on: {
        change: e => {
          this.heatmap = e.target.checked;
          this.drawOverlay();
        },
      },
    });
    return h(
      'div.toolbar',
      null,
      h('label', null, 'Window ', preset),
      h('button#reset', { type: 'button', on: { click: () => this.film?.reset() } }, 'Reset view'),
      h('label', null, heatmap, ' Attention map'),
      h('span.hint', null, 'left drag: window · middle drag: pan · right drag or wheel: zoom')
    );
  }

  // -- highlighting, both ways ---------------------------------------------------------

  setHighlight(key, findings, fixations) {
    if (this.highlight.key === key) return;
    this.highlight = { key, findings: new Set(findings), fixations: new Set(fixations) };
    this.applyHighlight();
    this.drawOverlay();
  }

  /** The highlight on the finding list and the report (the overlay reads it when drawn). */
  applyHighlight() {
    const key = this.highlight.key;
    for (const li of this.side.querySelectorAll('li.finding')) {
      li.classList.toggle('highlighted', this.highlight.findings.has(li.dataset.finding));
    }
    for (const span of this.side.querySelectorAll('.sentence')) {
      const link = this.sentenceLinks.get(span);
      const lit =
        link.findings.some(id => this.highlight.findings.has(id)) ||
        (key?.startsWith('fixation') && link.fixations.some(i => this.highlight.fixations.has(i)));
      span.classList.toggle('highlighted', Boolean(lit));
    }
  }

  hoverFinding(id) {
    if (id === null) return this.setHighlight(null, [], []);
    const finding = this.findings.find(f => findingId(f) === id);
    this.setHighlight(`finding:${id}`, [id], finding?.fixation_indices ?? []);
  }

  hoverFixation(index) {
    if (index === null) return this.setHighlight(null, [], []);
    const findings = this.findings.filter(f => (f.fixation_indices ?? []).includes(index)).map(findingId);
    this.setHighlight(`fixation:${index}`, findings, [index]);
  }

  hoverSentence(link) {
    if (link === null) return this.setHighlight(null, [], []);
    this.setHighlight(`sentence:${link.text}`, link.findings, link.fixations);
  }

  // -- the overlay -----------------------------------------------------------------------

  boxes() {
    const items = [];
    for (const finding of this.findings) {
      const id = findingId(finding);
      if (!finding.box || !this.shown.has(id)) continue;
      const decision = this.decisions.get(id);
      items.push({
        id,
        box: decision?.decision === 'correct' ? decision.box : finding.box,
        colour: stepColour(finding.step),
        label: `${finding.code.meaning} ${Math.round(finding.probability * 100)}%`,
        state: decision?.decision ?? 'undecided',
        highlighted: this.highlight.findings.has(id),
        editable: !this.readOnly && decision?.decision === 'correct',
      });
    }
    this.decisions.added.forEach((added, i) => {
      items.push({
        id: `added:${i}`,
        box: added.box,
        colour: '#ffffff',
        label: `${this.meaning(added.finding)} (added)`,
        state: 'added',
        highlighted: false,
        editable: !this.readOnly,
      });
    });
    if (this.pendingBox) {
      items.push({ id: 'pending', box: this.pendingBox, colour: '#ffffff', label: 'new finding', state: 'added', highlighted: true, editable: true });
    }
    return items;
  }

  drawOverlay() {
    if (!this.overlay) return;
    const shown = this.trajectory.flatMap((f, i) => (timing(f).start <= this.time ? [i] : []));
    const longest = Math.max(1, ...this.trajectory.map(f => timing(f).duration));
    const base = 0.03 * Math.min(this.rows, this.columns);
    const fixations = shown.map((i, n) => {
      const f = this.trajectory[i];
      return {
        index: i,
        x: f.x,
        y: f.y,
        step: f.step,
        radius: base * (0.4 + timing(f).duration / longest),
        current: n === shown.length - 1,
        highlighted: this.highlight.fixations.has(i),
      };
    });
    this.overlay.draw({
      rows: this.rows,
      columns: this.columns,
      fixations,
      boxes: this.boxes(),
      heatmap: this.heatmap ? this.result.attention : null,
      drawing: this.drawing,
    });
  }

  // -- decisions ---------------------------------------------------------------------------

  meaning(finding) {
    return this.labels().find(l => l.id === finding)?.meaning ?? finding;
  }

  labels() {
    const seen = new Map();
    for (const f of this.result.findings ?? []) seen.set(findingId(f), { id: findingId(f), meaning: f.code.meaning });
    return [...seen.values()];
  }

  boxChanged(id, box) {
    if (id === 'pending') this.pendingBox = box;
    else if (id.startsWith('added:')) this.decisions.added[Number(id.slice(6))].box = box;
    else this.decisions.set(id, { ...this.decisions.get(id), box });
    this.drawOverlay();
  }

  boxDrawn(box) {
    this.pendingBox = box;
    this.drawing = false;
    this.renderSide();
    this.drawOverlay();
  }

  changed() {
    this.renderSide();
    this.drawOverlay();
  }

  addPanel() {
    if (this.readOnly) return null;
    const list = h(
      'ol.added#added',
      null,
      this.decisions.added.map((a, i) =>
        h(
          'li',
          null,
          `${this.meaning(a.finding)} `,
          h('button', { type: 'button', on: { click: () => (this.decisions.remove(i), this.changed()) } }, 'Remove')
        )
      )
    );
    let controls;
    if (this.pendingBox) {
      const label = h(
        'select#added-label',
        { 'aria-label': 'Label' },
        this.labels().map(l => h('option', { value: l.id }, l.meaning))
      );
      controls = h(
        'div.pending',
        null,
        label,
        h(
          'button#add-confirm',
          {
            type: 'button',
            on: {
              click: () => {
                this.decisions.add(label.value, this.pendingBox);
                this.pendingBox = null;
                this.changed();
              },
            },
          },
          'Add'
        ),
        h('button', { type: 'button', on: { click: () => ((this.pendingBox = null), this.changed()) } }, 'Cancel')
      );
    } else {
      controls = h(
        'button#add-finding',
        {
          type: 'button',
          'aria-pressed': this.drawing ? 'true' : 'false',
          on: {
            click: () => {
              this.drawing = !this.drawing;
              this.changed();
            },
          },
        },
        this.drawing ? 'Drawing: drag a box on the film (click to cancel)' : 'Add a missed finding'
      );
    }
    return h('section.add', null, h('h2', null, 'Missed findings'), list, controls);
  }

  signBar() {
    if (this.readOnly) return null;
    const required = this.findings.filter(f => f.present).map(findingId);
    const ready = this.decisions.complete(required);
    const status = h('span.sign-status#sign-status', null, ready ? '' : 'Decide on every present finding (a rejection needs its reason).');
    const button = h('button#sign', { type: 'button', disabled: !ready }, 'Sign');
    button.addEventListener('click', () => this.sign(button, status));
    return h('section.sign', null, button, status);
  }

  async sign(button, status) {
    button.disabled = true;
    status.textContent = 'Signing…';
    try {
      await sign(this.detail.key, this.decisions.payload());
      const deadline = performance.now() + POLL_LIMIT_MS;
      let detail = this.detail;
      while (detail.state !== 'signed') {
        if (performance.now() > deadline) throw new Error('the node has not built the signed report yet');
        await new Promise(resolve => setTimeout(resolve, POLL_MS));
        detail = await fetchStudy(this.detail.key);
        const latest = detail.history?.at(-1);
        if (!detail.pending && latest?.state === 'failed') throw new Error(latest.error ?? 'the signed report could not be built');
      }
      window.location.reload(); // the signed study opens read-only with its history
    } catch (error) {
      status.textContent = `Not signed: ${error.message}`;
      button.disabled = false;
    }
  }

  /** The draft report, each sentence linked (withheld with the findings out of domain). */
  reportPanel() {
    if (this.withheld) {
      return h('section.report', null, h('h2', null, 'Draft report'), h('p', null, "Withheld: the film is outside the model's domain."));
    }
    return reportElement({ ...this.result, findings: this.findings }, this.links, (span, link) => {
      this.sentenceLinks.set(span, link);
      span.addEventListener('pointerenter', () => this.hoverSentence(link));
      span.addEventListener('pointerleave', () => this.hoverSentence(null));
      span.addEventListener('focus', () => this.hoverSentence(link));
      span.addEventListener('click', () => {
        const first = Math.min(...link.fixations);
        if (Number.isFinite(first)) this.replay.seek(timing(this.trajectory[first]).start);
      });
    });
  }

  renderSide() {
    this.sentenceLinks = new Map();
    const ctx = {
      findings: this.findings,
      decisions: this.decisions,
      reasons: this.detail.reasons ?? [],
      readOnly: this.readOnly,
      shown: this.shown,
      highlighted: this.highlight.findings,
      toggleBox: id => {
        if (this.shown.has(id)) this.shown.delete(id);
        else this.shown.add(id);
        this.drawOverlay();
      },
      showBox: id => this.shown.add(id),
      hover: id => this.hoverFinding(id),
      changed: () => this.changed(),
    };
    const parts = [
      this.detail.state === 'signed' ? historyElement(this.detail) : null,
      h(
        'section.findings-panel',
        null,
        h('h2', null, 'Findings'),
        this.withheld ? h('p', null, 'Withheld: the film is outside the model\'s domain.') : findingList(ctx)
      ),
      this.addPanel(),
      this.signBar(),
      this.reportPanel(),
    ];
    this.side.replaceChildren(...parts.filter(Boolean));
    this.applyHighlight();
  }
}
