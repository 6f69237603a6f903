// A small element builder: h('tag#id.class', {attributes, on: {event: fn}}, ...children).

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(element, attributes, children) {
  for (const [key, value] of Object.entries(attributes ?? {})) {
    if (key === 'on') {
      for (const [event, handler] of Object.entries(value)) element.addEventListener(event, handler);
    } else if (key === 'dataset') {
      Object.assign(element.dataset, value);
    } else if (value === true) {
      element.setAttribute(key, '');
    } else if (value !== false && value != null) {
      element.setAttribute(key, String(value));
    }
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** 'tag.class#id.class' -> {tag, id, classes} */
function parse(selector) {
  const [tag, ...parts] = selector.split(/(?=[.#])/);
  const id = parts.find(p => p.startsWith('#'))?.slice(1);
  const classes = parts.filter(p => p.startsWith('.')).map(p => p.slice(1));
  return { tag: tag || 'div', id, classes };
}

export function h(selector, attributes, ...children) {
  const { tag, id, classes } = parse(selector);
  const element = document.createElement(tag);
  if (id) element.id = id;
  if (classes.length) element.classList.add(...classes);
  return build(element, attributes, children);
}

export function svg(selector, attributes, ...children) {
  const { tag, id, classes } = parse(selector);
  const element = document.createElementNS(SVG_NS, tag);
  if (id) element.id = id;
  if (classes.length) element.classList.add(...classes);
  return build(element, attributes, children);
}
