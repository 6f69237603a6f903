// The worklist: analysed studies in triage order (the API's order: critical first, then
// the longest waiting), filtered by state; a row opens the study view.
import { worklist, studyPath } from './api.js';
import { h } from './dom.js';

const STATES = [
  ['', 'All'],
  ['awaiting_review', 'Awaiting review'],
  ['signed', 'Signed'],
  ['out_of_domain', 'Out of domain'],
  ['failed', 'Failed'],
];
const STATE_LABEL = Object.fromEntries(STATES);

function studyTime(item) {
  const date = item.StudyDate?.replace(/^(\d{4})(\d{2})(\d{2})$/, '$1-$2-$3') ?? '';
  const time = item.StudyTime?.replaceAll(':', '').slice(0, 4).replace(/^(\d{2})(\d{2})$/, '$1:$2') ?? '';
  return `${date} ${time}`.trim() || '—';
}

function findingsText(item) {
  if (item.findings_withheld) return 'withheld (out of domain)';
  if (item.error) return item.error;
  return item.findings.map(f => `${f.code.meaning} ${(f.probability * 100).toFixed(0)}%`).join(', ') || 'none';
}

function row(item) {
  const open = () => window.location.assign(studyPath(item.key));
  return h(
    'tr.study',
    { tabindex: 0, dataset: { key: item.key, state: item.state }, on: { click: open, keydown: e => e.key === 'Enter' && open() } },
    h('td', null, item.critical ? h('span.badge.critical', { title: 'critical finding' }, 'CRITICAL') : ''),
    h('td', null, h('span', { class: `state ${item.state}` }, STATE_LABEL[item.state] ?? item.state)),
    h('td', null, h('a', { href: studyPath(item.key) }, item.AccessionNumber || `(none) ${item.key.slice(0, 8)}`)),
    h('td', null, studyTime(item)),
    h('td', null, item.Modality ?? ''),
    h('td.findings', null, findingsText(item))
  );
}

export async function showWorklist(app) {
  document.title = 'Worklist · GazeX Node review';
  const params = new URLSearchParams(window.location.search);
  const filter = h(
    'select#state-filter',
    { 'aria-label': 'State' },
    STATES.map(([value, label]) => h('option', { value, selected: value === (params.get('state') ?? '') }, label))
  );
  const search = h('input#search', { type: 'search', placeholder: 'Accession', value: params.get('q') ?? '' });
  const body = h('tbody');
  const total = h('span.total');

  async function load() {
    const page = await worklist({ state: filter.value, q: search.value.trim() });
    body.replaceChildren(...page.items.map(row));
    if (!page.items.length) body.append(h('tr', null, h('td', { colspan: 6 }, 'No studies.')));
    total.textContent = `${page.total} studies`;
    const query = new URLSearchParams();
    if (filter.value) query.set('state', filter.value);
    if (search.value.trim()) query.set('q', search.value.trim());
    history.replaceState(null, '', `${window.location.pathname}${query.size ? `?${query}` : ''}`);
  }

  filter.addEventListener('change', load);
  search.addEventListener('change', load);
  app.replaceChildren(
    h(
      'section.worklist',
      null,
      h('h1', null, 'Worklist'),
      h('div.filters', null, h('label', null, 'State ', filter), h('label', null, 'Search ', search), total),
      h(
        'table#worklist',
        null,
        h('thead', null, h('tr', null, ['', 'State', 'Accession', 'Study time', 'Modality', 'Findings'].map(t => h('th', null, t)))),
        body
      )
    )
  );
  await load();
}
