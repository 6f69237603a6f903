// The film in a cornerstone3D StackViewport: a WADO-RS frame of the node's /review/dicom-web,
// its header registered from the /metadata route, VOI presets, and pan / zoom / window tools.
import {
  Enums,
  RenderingEngine,
  getRenderingEngine,
  init as initCore,
  utilities,
} from '@cornerstonejs/core';
import { init as initLoader, wadors } from '@cornerstonejs/dicom-image-loader';
import {
  Enums as ToolEnums,
  PanTool,
  ToolGroupManager,
  WindowLevelTool,
  ZoomTool,
  addTool,
  init as initTools,
} from '@cornerstonejs/tools';

const ENGINE_ID = 'gazex-review';
const VIEWPORT_ID = 'film';
const TOOL_GROUP_ID = 'film-tools';
let started = null;

function startCornerstone() {
  started ??= (async () => {
    await initCore();
    initLoader({ maxWebWorkers: 1 });
    initTools();
    for (const tool of [PanTool, ZoomTool, WindowLevelTool]) addTool(tool);
  })();
  return started;
}

function tag(header, keyword) {
  return header?.[keyword]?.Value?.[0];
}

/**
 * Display presets for a projection radiograph, as windows over the film's own value range
 * (1st to 99th percentile of its modality values): a radiograph has no calibrated units
 * like CT's Hounsfield scale. "Lung" spreads the dark (radiolucent) part of the display,
 * "Bone" the bright part, "Soft tissue" the middle; for MONOCHROME1 the stored values run
 * the other way, so the same display fractions map to the other end.
 */
function presetsFor(image, photometricInterpretation) {
  const pixels = image.getPixelData();
  const step = Math.max(1, Math.floor(pixels.length / 200_000));
  const sample = [];
  for (let i = 0; i < pixels.length; i += step) sample.push(pixels[i]);
  sample.sort((a, b) => a - b);
  const scaled = image.preScale?.scaled;
  const slope = scaled ? 1 : image.slope ?? 1;
  const intercept = scaled ? 0 : image.intercept ?? 0;
  const at = q => sample[Math.min(sample.length - 1, Math.floor(q * sample.length))] * slope + intercept;
  const low = at(0.01);
  const high = at(0.99);
  const inverted = photometricInterpretation === 'MONOCHROME1';
  const window = (from, to) => {
    const a = inverted ? high - to * (high - low) : low + from * (high - low);
    const b = inverted ? high - from * (high - low) : low + to * (high - low);
    return { lower: Math.min(a, b), upper: Math.max(a, b) };
  };
  return {
    lung: window(0, 0.55),
    soft: window(0.3, 0.8),
    bone: window(0.5, 1),
    full: window(0, 1),
  };
}

/** The DICOM JSON header of the image, registered for the wadors loader; its imageId. */
async function registerImage(wadoRoot, image) {
  const instance = `${wadoRoot}/studies/${image.StudyInstanceUID}/series/${image.SeriesInstanceUID}/instances/${image.SOPInstanceUID}`;
  const response = await fetch(`${instance}/metadata`, {
    credentials: 'same-origin',
    headers: { accept: 'application/dicom+json' },
  });
  if (!response.ok) throw new Error(`the film's header: ${response.status} ${response.statusText}`);
  const [header] = await response.json();
  const imageId = `wadors:${new URL(`${instance}/frames/1`, window.location.href)}`;
  wadors.metaDataManager.add(imageId, header);
  return { imageId, header };
}

export class Film {
  /** Shows the study's image in `element`; resolves once it is drawn (full resolution:
   *  the frame is the uncompressed original). */
  static async open(element, wadoRoot, image) {
    await startCornerstone();
    const { imageId, header } = await registerImage(wadoRoot, image);
    getRenderingEngine(ENGINE_ID)?.destroy();
    const engine = new RenderingEngine(ENGINE_ID);
    engine.enableElement({ viewportId: VIEWPORT_ID, type: Enums.ViewportType.STACK, element });
    const viewport = engine.getViewport(VIEWPORT_ID);
    ToolGroupManager.destroyToolGroup(TOOL_GROUP_ID);
    const tools = ToolGroupManager.createToolGroup(TOOL_GROUP_ID);
    for (const tool of [PanTool, ZoomTool, WindowLevelTool]) tools.addTool(tool.toolName);
    const { MouseBindings } = ToolEnums;
    tools.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }] });
    tools.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
    tools.setToolActive(ZoomTool.toolName, {
      bindings: [{ mouseButton: MouseBindings.Secondary }, { mouseButton: MouseBindings.Wheel }],
    });
    tools.addViewport(VIEWPORT_ID, ENGINE_ID);
    element.addEventListener('contextmenu', e => e.preventDefault());
    const drawn = new Promise(resolve => element.addEventListener(Enums.Events.IMAGE_RENDERED, resolve, { once: true }));
    await viewport.setStack([imageId]);
    viewport.render();
    await drawn;
    const film = new Film(engine, viewport, imageId, header);
    new ResizeObserver(() => engine.resize(true, false)).observe(element);
    return film;
  }

  constructor(engine, viewport, imageId, header) {
    this.engine = engine;
    this.viewport = viewport;
    this.imageId = imageId;
    this.header = header;
    this.defaultVOI = viewport.getProperties().voiRange;
    this.presets = presetsFor(viewport.getCornerstoneImage(), tag(header, '00280004'));
  }

  get element() {
    return this.viewport.element;
  }

  get photometricInterpretation() {
    return tag(this.header, '00280004');
  }

  /** "default" (the header's window, else cornerstone's from the pixels), lung, soft, bone, full. */
  setPreset(name) {
    const voiRange = name === 'default' ? this.defaultVOI : this.presets[name];
    this.viewport.setProperties({ voiRange });
    this.viewport.render();
  }

  reset() {
    this.viewport.resetCamera();
    this.viewport.resetProperties?.();
    this.viewport.setProperties({ voiRange: this.defaultVOI });
    this.viewport.render();
  }

  /** Canvas (CSS pixel) position of a source-pixel point (column, row; DICOM SCOORD). */
  toCanvas(x, y) {
    return this.viewport.worldToCanvas(utilities.imageToWorldCoords(this.imageId, [x, y]));
  }

  /** Source-pixel point (column, row) under a canvas position. */
  toImage(cx, cy) {
    return utilities.worldToImageCoords(this.imageId, this.viewport.canvasToWorld([cx, cy]));
  }

  /** Calls `redraw` whenever the film is drawn anew (pan, zoom, resize, VOI). */
  onRender(redraw) {
    this.element.addEventListener(Enums.Events.IMAGE_RENDERED, redraw);
    this.element.addEventListener(Enums.Events.CAMERA_MODIFIED, redraw);
  }
}
