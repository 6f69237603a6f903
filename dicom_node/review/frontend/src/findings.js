// The finding list: probability, present or not, a box toggle, and (unless read-only)
// the decision controls: accept, reject with a coded reason, correct (drag the box).
import { h } from './dom.js';
import { findingId } from './report.js';
import { stepColour } from './steps.js';

function percent(p) {
  return p >= 0.995 || p < 0.005 ? `${(p * 100).toFixed(1)}%` : `${Math.round(p * 100)}%`;
}

function decisionControls(id, finding, ctx) {
  const current = ctx.decisions.get(id);
  const choose = decision => () => {
    if (decision === 'correct') {
      ctx.decisions.set(id, { decision, box: { ...(current?.box ?? finding.box) } });
      ctx.showBox(id);
    } else if (decision === 'reject') {
      ctx.decisions.set(id, { decision, reason: current?.reason ?? '' });
    } else {
      ctx.decisions.set(id, { decision });
    }
    ctx.changed();
  };
  const button = (decision, label, disabled = false) =>
    h(
      'button',
      {
        type: 'button',
        class: `decide ${decision}${current?.decision === decision ? ' chosen' : ''}`,
        'aria-pressed': current?.decision === decision ? 'true' : 'false',
        disabled,
        dataset: { decision },
        on: { click: choose(decision) },
      },
      label
    );
  const controls = h(
    'div.decision',
    null,
    button('accept', 'Accept'),
    button('reject', 'Reject'),
    button('correct', 'Correct box', !finding.box)
  );
  if (current?.decision === 'reject') {
    const reason = h(
      'select.reason',
      {
        'aria-label': 'Reason',
        on: {
          change: e => {
            ctx.decisions.set(id, { decision: 'reject', reason: e.target.value });
            ctx.changed();
          },
        },
      },
      h('option', { value: '' }, 'Reason…'),
      ctx.reasons.map(r => h('option', { value: r.code, selected: r.code === current.reason }, r.meaning))
    );
    controls.append(reason);
  }
  if (current?.decision === 'correct') controls.append(h('span.hint', null, 'drag the box or its corners'));
  return controls;
}

function findingItem(finding, ctx) {
  const id = findingId(finding);
  const decision = ctx.decisions.get(id);
  const swatch = h('span.swatch', { title: `step ${finding.step}` });
  swatch.style.background = stepColour(finding.step);
  return h(
    'li',
    {
      class: ['finding', finding.present ? 'present' : 'absent', ctx.highlighted.has(id) ? 'highlighted' : '', decision ? decision.decision : '']
        .filter(Boolean)
        .join(' '),
      dataset: { finding: id },
      on: { pointerenter: () => ctx.hover(id), pointerleave: () => ctx.hover(null) },
    },
    h(
      'div.line',
      null,
      swatch,
      h('span.meaning', null, finding.code.meaning),
      h('span.probability', null, percent(finding.probability)),
      finding.present ? h('span.badge.present', null, 'present') : h('span.badge.absent', null, 'absent'),
      finding.box
        ? h(
            'label.toggle',
            null,
            h('input', { type: 'checkbox', class: 'box-toggle', checked: ctx.shown.has(id), on: { change: () => ctx.toggleBox(id) } }),
            ' box'
          )
        : null
    ),
    ctx.readOnly ? decided(decision, ctx.reasons) : decisionControls(id, finding, ctx)
  );
}

/** A signed decision, read-only. */
function decided(decision, reasons) {
  if (!decision) return null;
  const reason = reasons.find(r => r.code === decision.reason)?.meaning ?? decision.reason;
  const text = { accept: 'Accepted', reject: `Rejected: ${reason}`, correct: 'Box corrected' }[decision.decision];
  return h('div', { class: `decided ${decision.decision}` }, text ?? decision.decision);
}

/** The findings the model called present, then the others folded away (most probable
 *  first). ctx: {findings, decisions, reasons, readOnly, shown (Set of ids with the box
 *  drawn), highlighted (Set), toggleBox(id), showBox(id), hover(id|null), changed()} */
export function findingList(ctx) {
  const ordered = [...ctx.findings].sort((a, b) => b.probability - a.probability);
  const present = ordered.filter(f => f.present);
  const absent = ordered.filter(f => !f.present);
  const decidedAbsent = absent.some(f => ctx.decisions.get(findingId(f)));
  return h(
    'div#findings',
    null,
    h('ol.findings', null, present.map(f => findingItem(f, ctx))),
    present.length ? null : h('p', null, 'The model called no finding present.'),
    absent.length
      ? h(
          'details.absent-findings',
          { open: decidedAbsent },
          h('summary', null, `Not present (${absent.length})`),
          h('ol.findings', null, absent.map(f => findingItem(f, ctx)))
        )
      : null
  );
}
