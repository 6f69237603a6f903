// The ABCDEF systematic review: each step's name and colour, used everywhere a step shows.

export const STEPS = [
  { step: 'A', name: 'Airways', colour: '#4cc9f0' },
  { step: 'B', name: 'Breathing', colour: '#80ed99' },
  { step: 'C', name: 'Circulation', colour: '#f72585' },
  { step: 'D', name: 'Diaphragm', colour: '#ffb703' },
  { step: 'E', name: 'Everything else', colour: '#b388eb' },
  { step: 'F', name: 'Foreign material', colour: '#fb8500' },
];

const BY_STEP = new Map(STEPS.map(s => [s.step, s]));

export function stepColour(step) {
  return BY_STEP.get(step)?.colour ?? '#cccccc';
}

export function stepName(step) {
  return BY_STEP.get(step)?.name ?? step;
}
