// The inspection trajectory replayed in time: play, pause, scrub and speed, with a step
// bar that shows which ABCDEF step the model was in. Calls onTime(ms) on every change.
import { h } from './dom.js';
import { STEPS, stepColour } from './steps.js';

const SPEEDS = [0.5, 1, 2, 4, 8];

/** A fixation's start and dwell in ms, whichever names the result uses. */
export function timing(fixation) {
  const start = fixation.start_ms ?? fixation.onset_ms ?? fixation.start ?? 0;
  const duration = fixation.duration_ms ?? fixation.duration ?? 0;
  return { start, duration };
}

export class Replay {
  constructor(trajectory, onTime) {
    this.trajectory = trajectory;
    this.onTime = onTime;
    this.end = Math.max(0, ...trajectory.map(f => timing(f).start + timing(f).duration));
    this.time = this.end; // opens showing the whole path; Play starts from the beginning
    this.speed = 1;
    this.frame = null;
    this.element = this.build();
    this.update();
  }

  build() {
    this.playButton = h('button#play', { type: 'button', on: { click: () => this.toggle() } }, 'Play');
    this.scrub = h('input#scrub', {
      type: 'range',
      min: 0,
      max: Math.ceil(this.end),
      step: 10,
      'aria-label': 'Replay time',
      on: { input: () => this.seek(Number(this.scrub.value)) },
    });
    this.speedSelect = h(
      'select#speed',
      { 'aria-label': 'Speed', on: { change: () => (this.speed = Number(this.speedSelect.value)) } },
      SPEEDS.map(s => h('option', { value: s, selected: s === 1 }, `${s}×`))
    );
    this.clock = h('span.clock');
    this.stepBar = h(
      'ol.step-bar#step-bar',
      null,
      STEPS.map(({ step, name }) =>
        h('li', { dataset: { step }, title: name }, h('span.swatch', { dataset: { step } }), `${step} ${name}`)
      )
    );
    for (const li of this.stepBar.children) li.firstChild.style.background = stepColour(li.dataset.step);
    return h(
      'section.replay',
      { 'aria-label': 'Trajectory replay' },
      h('div.controls', null, this.playButton, this.scrub, this.speedSelect, this.clock),
      this.stepBar
    );
  }

  /** Indexes of the fixations started by the current time, in order. */
  visible() {
    return this.trajectory.flatMap((f, i) => (timing(f).start <= this.time ? [i] : []));
  }

  currentStep() {
    const shown = this.visible();
    return shown.length ? this.trajectory[shown[shown.length - 1]].step : null;
  }

  toggle() {
    if (this.frame !== null) this.pause();
    else this.play();
  }

  play() {
    if (this.time >= this.end) this.time = 0;
    let last = performance.now();
    const tick = now => {
      this.time = Math.min(this.end, this.time + (now - last) * this.speed);
      last = now;
      this.update();
      if (this.time >= this.end) this.pause();
      else this.frame = requestAnimationFrame(tick);
    };
    this.frame = requestAnimationFrame(tick);
    this.update();
  }

  pause() {
    if (this.frame !== null) cancelAnimationFrame(this.frame);
    this.frame = null;
    this.update();
  }

  seek(ms) {
    this.time = Math.max(0, Math.min(this.end, ms));
    this.update();
  }

  update() {
    this.playButton.textContent = this.frame !== null ? 'Pause' : 'Play';
    this.scrub.value = String(Math.round(this.time));
    this.clock.textContent = `${(this.time / 1000).toFixed(1)} / ${(this.end / 1000).toFixed(1)} s`;
    const current = this.currentStep();
    const seen = new Set(this.visible().map(i => this.trajectory[i].step));
    for (const li of this.stepBar.children) {
      li.classList.toggle('current', li.dataset.step === current);
      li.classList.toggle('seen', seen.has(li.dataset.step));
    }
    this.element.dataset.step = current ?? '';
    this.onTime(this.time);
  }
}
