// The draft report, one section per ABCDEF step plus the impression; each sentence is
// linked to the finding that it reports (and that finding's fixations), else to the
// fixations of its step.
import { h } from './dom.js';
import { stepColour, stepName } from './steps.js';

export function findingId(finding) {
  return `${finding.code.scheme}:${finding.code.value}`;
}

function sentences(text) {
  return text.split(/(?<=[.!?])\s+/).filter(Boolean);
}

/** [{text, step, findings: [id], fixations: [index]}] for every sentence of the report. */
export function reportLinks(result) {
  const trajectory = result.trajectory ?? [];
  const links = [];
  for (const section of result.report?.sections ?? []) {
    for (const text of sentences(section.text)) {
      const findings = (result.findings ?? []).filter(f => f.sentence?.trim() === text.trim());
      const fixations = findings.length
        ? [...new Set(findings.flatMap(f => f.fixation_indices ?? []))]
        : trajectory.flatMap((f, i) => (f.step === section.step ? [i] : []));
      links.push({ text, step: section.step, findings: findings.map(findingId), fixations });
    }
  }
  return links;
}

/** The report as elements; `link` is called with each sentence's element and its link. */
export function reportElement(result, links, link) {
  const bySection = new Map();
  for (const item of links) {
    if (!bySection.has(item.step)) bySection.set(item.step, []);
    bySection.get(item.step).push(item);
  }
  const sections = (result.report?.sections ?? []).map(section => {
    const swatch = h('span.swatch');
    swatch.style.background = stepColour(section.step);
    return h(
      'section.report-step',
      { dataset: { step: section.step } },
      h('h3', null, swatch, `${section.step} · ${stepName(section.step)}`),
      h(
        'p',
        null,
        (bySection.get(section.step) ?? []).flatMap(item => {
          const span = h('span.sentence', { tabindex: 0, dataset: { findings: item.findings.join(' ') } }, item.text);
          link(span, item);
          return [span, ' '];
        })
      )
    );
  });
  const impression = result.report?.impression
    ? h('section.impression', null, h('h3', null, 'Impression'), h('p', null, result.report.impression))
    : null;
  return h('section.report', null, h('h2', null, 'Draft report'), sections, impression);
}
