// The reviewer's decisions: per finding accept / reject (with a coded reason) / correct
// (a new box), and findings the model missed (a label and a box); the /sign payload.

export class Decisions {
  constructor() {
    this.byFinding = new Map();
    this.added = [];
  }

  get(id) {
    return this.byFinding.get(id) ?? null;
  }

  set(id, decision) {
    if (decision) this.byFinding.set(id, decision);
    else this.byFinding.delete(id);
  }

  add(finding, box) {
    this.added.push({ finding, box });
  }

  remove(index) {
    this.added.splice(index, 1);
  }

  /** Every finding in `required` has a complete decision (a reject needs its reason). */
  complete(required) {
    return required.every(id => {
      const d = this.get(id);
      return d && (d.decision !== 'reject' || d.reason) && (d.decision !== 'correct' || d.box);
    });
  }

  payload() {
    const round = box => Object.fromEntries(Object.entries(box).map(([k, v]) => [k, Math.round(v * 10) / 10]));
    return {
      decisions: [...this.byFinding].map(([finding, d]) => ({
        finding,
        decision: d.decision,
        ...(d.decision === 'reject' ? { reason: d.reason } : {}),
        ...(d.decision === 'correct' ? { box: round(d.box) } : {}),
      })),
      added: this.added.map(a => ({ finding: a.finding, box: round(a.box) })),
    };
  }
}
