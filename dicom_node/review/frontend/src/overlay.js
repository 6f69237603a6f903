// The SVG drawn over the film: attention heatmap, finding boxes (with corner handles when
// being corrected), the inspection trajectory up to the replay's time, and a box being
// drawn. Everything is placed in source pixels and mapped through the viewport
// (worldToCanvas), so it follows zoom and pan; it is redrawn on every render.
import { svg } from './dom.js';
import { stepColour } from './steps.js';

const CORNERS = ['x0y0', 'x1y0', 'x1y1', 'x0y1'];
const MIN_BOX = 2;

function heatColour(value) {
  // dark blue -> red -> yellow, like the jet-ish maps radiologists know from CAD
  const hue = 240 - 200 * value;
  return `hsl(${hue}, 100%, 50%)`;
}

function normalise(box) {
  return {
    x0: Math.min(box.x0, box.x1),
    y0: Math.min(box.y0, box.y1),
    x1: Math.max(box.x0, box.x1),
    y1: Math.max(box.y0, box.y1),
  };
}

export class Overlay {
  /**
   * film: the Film; handlers: {fixationHover(index|null), fixationClick(index),
   * boxClick(id), boxChanged(id, box), boxDrawn(box)}.
   */
  constructor(film, handlers) {
    this.film = film;
    this.handlers = handlers;
    this.view = null;
    this.drag = null;
    this.root = svg('svg.overlay', { 'data-testid': 'overlay' });
    film.element.append(this.root);
    film.onRender(() => this.redraw());
    this.root.addEventListener('pointerdown', e => this.pointerDown(e));
    this.root.addEventListener('pointermove', e => this.pointerMove(e));
    this.root.addEventListener('pointerup', e => this.pointerUp(e));
  }

  /** view: {rows, columns, fixations: [{index, x, y, step, radius, current, highlighted}],
   *  boxes: [{id, box, colour, label, state, highlighted, editable}], heatmap: grid|null,
   *  drawing: bool} */
  draw(view) {
    this.view = view;
    this.redraw();
  }

  point(x, y) {
    const [cx, cy] = this.film.toCanvas(x, y);
    return [cx, cy];
  }

  redraw() {
    const view = this.view;
    if (!view) return;
    const { clientWidth: width, clientHeight: height } = this.film.element;
    this.root.setAttribute('width', width);
    this.root.setAttribute('height', height);
    this.root.classList.toggle('drawing', view.drawing);
    const layers = [
      view.heatmap ? this.heatmap(view) : null,
      this.trajectory(view),
      this.boxes(view),
      this.drag?.kind === 'draw' ? this.rectangle(this.drag.box, 'new-box') : null,
    ];
    this.root.replaceChildren(...layers.filter(Boolean));
  }

  heatmap(view) {
    const grid = view.heatmap;
    const cellH = view.rows / grid.length;
    const cells = [];
    grid.forEach((line, r) =>
      line.forEach((value, c) => {
        const cellW = view.columns / line.length;
        const [x0, y0] = this.point(c * cellW, r * cellH);
        const [x1, y1] = this.point((c + 1) * cellW, (r + 1) * cellH);
        cells.push(
          svg('rect', {
            x: Math.min(x0, x1),
            y: Math.min(y0, y1),
            width: Math.abs(x1 - x0),
            height: Math.abs(y1 - y0),
            fill: heatColour(value),
            'fill-opacity': (0.55 * value).toFixed(3),
          })
        );
      })
    );
    return svg('g.heatmap', { 'data-testid': 'heatmap' }, cells);
  }

  trajectory(view) {
    const group = svg('g.trajectory');
    const points = view.fixations.map(f => this.point(f.x, f.y));
    if (points.length > 1) {
      group.append(svg('polyline.path', { points: points.map(p => p.join(',')).join(' ') }));
    }
    view.fixations.forEach((f, i) => {
      const [cx, cy] = points[i];
      const [ex] = this.point(f.x + f.radius, f.y);
      const r = Math.max(4, Math.abs(ex - cx));
      const classes = ['fixation', f.current ? 'current' : '', f.highlighted ? 'highlighted' : '']
        .filter(Boolean)
        .join(' ');
      group.append(
        svg(
          'g',
          {
            class: classes,
            dataset: { index: f.index, step: f.step },
            on: {
              pointerenter: () => this.handlers.fixationHover(f.index),
              pointerleave: () => this.handlers.fixationHover(null),
              click: () => this.handlers.fixationClick(f.index),
            },
          },
          svg('circle.ring', { cx, cy, r, stroke: stepColour(f.step) }),
          svg('text', { x: cx, y: cy + 4, 'text-anchor': 'middle' }, f.index + 1)
        )
      );
    });
    return group;
  }

  rectangle(box, cls) {
    const [x0, y0] = this.point(box.x0, box.y0);
    const [x1, y1] = this.point(box.x1, box.y1);
    return svg(`rect.${cls}`, {
      x: Math.min(x0, x1),
      y: Math.min(y0, y1),
      width: Math.abs(x1 - x0),
      height: Math.abs(y1 - y0),
    });
  }

  boxes(view) {
    const group = svg('g.boxes');
    for (const item of view.boxes) {
      const g = svg('g', {
        class: ['box', item.state, item.highlighted ? 'highlighted' : '', item.editable ? 'editable' : '']
          .filter(Boolean)
          .join(' '),
        dataset: { id: item.id },
      });
      const rect = this.rectangle(item.box, 'frame');
      rect.setAttribute('stroke', item.colour);
      rect.addEventListener('click', () => this.handlers.boxClick(item.id));
      const [lx, ly] = this.point(Math.min(item.box.x0, item.box.x1), Math.min(item.box.y0, item.box.y1));
      g.append(rect, svg('text.label', { x: lx + 2, y: ly - 4, fill: item.colour }, item.label));
      if (item.editable) {
        for (const corner of CORNERS) {
          const [cx, cy] = this.point(item.box[corner.slice(0, 2)], item.box[corner.slice(2)]);
          g.append(svg('circle.handle', { cx, cy, r: 6, dataset: { id: item.id, corner } }));
        }
        rect.dataset.move = item.id;
      }
      group.append(g);
    }
    return group;
  }

  imagePoint(event) {
    const bounds = this.root.getBoundingClientRect();
    return this.film.toImage(event.clientX - bounds.left, event.clientY - bounds.top);
  }

  pointerDown(event) {
    if (event.button !== 0 || !this.view) return;
    const target = event.target;
    const [x, y] = this.imagePoint(event);
    if (target.classList.contains('handle')) {
      const item = this.view.boxes.find(b => b.id === target.dataset.id);
      this.drag = { kind: 'corner', id: item.id, corner: target.dataset.corner, box: { ...item.box } };
    } else if (target.dataset.move) {
      const item = this.view.boxes.find(b => b.id === target.dataset.move);
      this.drag = { kind: 'move', id: item.id, from: [x, y], start: { ...item.box }, box: { ...item.box } };
    } else if (this.view.drawing) {
      this.drag = { kind: 'draw', box: { x0: x, y0: y, x1: x, y1: y } };
    } else {
      return;
    }
    this.root.setPointerCapture(event.pointerId);
    event.preventDefault();
    event.stopPropagation();
  }

  pointerMove(event) {
    if (!this.drag) return;
    const [x, y] = this.imagePoint(event);
    const clamp = (v, max) => Math.max(0, Math.min(max, v));
    const drag = this.drag;
    if (drag.kind === 'corner') {
      drag.box[drag.corner.slice(0, 2)] = clamp(x, this.view.columns);
      drag.box[drag.corner.slice(2)] = clamp(y, this.view.rows);
    } else if (drag.kind === 'move') {
      const dx = x - drag.from[0];
      const dy = y - drag.from[1];
      drag.box = { x0: drag.start.x0 + dx, x1: drag.start.x1 + dx, y0: drag.start.y0 + dy, y1: drag.start.y1 + dy };
    } else {
      drag.box.x1 = clamp(x, this.view.columns);
      drag.box.y1 = clamp(y, this.view.rows);
    }
    if (drag.kind !== 'draw') {
      const item = this.view.boxes.find(b => b.id === drag.id);
      item.box = drag.box;
    }
    this.redraw();
    event.stopPropagation();
  }

  pointerUp(event) {
    const drag = this.drag;
    if (!drag) return;
    this.drag = null;
    this.root.releasePointerCapture(event.pointerId);
    const box = normalise(drag.box);
    if (drag.kind === 'draw') {
      if (box.x1 - box.x0 >= MIN_BOX && box.y1 - box.y0 >= MIN_BOX) this.handlers.boxDrawn(box);
      this.redraw();
    } else {
      this.handlers.boxChanged(drag.id, box);
    }
    event.stopPropagation();
  }
}
