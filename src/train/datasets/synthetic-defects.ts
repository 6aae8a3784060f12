/**
 * Texture datasets with synthetic defects and their masks, from the CC0 textures scikit-image ships
 * (Debian python3-skimage: brick, grass, gravel — 512×512 grey photographs).
 *
 * - Regions: training crops come from the top half of the texture, test crops from the bottom half, so a
 *   good test part is never made of pixels the model saw in training (else the test would reward
 *   memorising, and a crop overlapping a training crop would score as "good" for the wrong reason).
 * - Crops are native texture pixels (no resampling), so the texture's grain and the defects' edges have
 *   the same sharpness; `size` is the crop edge in texture pixels and the image size.
 * - Defects (one per image) are drawn from anti-aliased shapes: `scratch` (thin curved bright or dark line),
 *   `spot` (1–3 irregular stains, darker or brighter, with a rim), `cut` (a dark gap with a bright lip on
 *   one side and a shadow on the other), `color` (a soft region tinted or brightened/darkened). Each covers
 *   roughly 0.4–5 % of the image: visible, but far from the trivially huge blobs a detector cannot miss.
 * - The mask is exactly the set of pixels the defect changed, so outside the mask a defective image equals
 *   the good crop it was made from bit for bit (the tests check this).
 * - Everything is deterministic from the seed (sfc32, see random.ts).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { DatasetError, describeCause } from './errors.js';
import { mapLimit, writeTreeAtomically } from './fs-utils.js';
import { deriveSeed, makeRng, type Rng } from './random.js';

export const SKIMAGE_DATA_DIR = '/usr/lib/python3/dist-packages/skimage/data';
export const TEXTURES = ['brick', 'grass', 'gravel'] as const;
export type TextureName = (typeof TEXTURES)[number];
export const DEFECT_TYPES = ['scratch', 'spot', 'cut', 'color'] as const;
export type DefectType = (typeof DEFECT_TYPES)[number];

/** A grey texture in memory. */
export interface Texture {
  name: string;
  width: number;
  height: number;
  /** Row-major [H, W] 8-bit grey. */
  grey: Uint8Array;
}

/** Half-open pixel rectangle [x0, x1) × [y0, y1). */
export interface Region {
  x0: number;
  y0: number;
  x1: number;
  y1: number;
}

const textureCache = new Map<string, Promise<Texture>>();

/** Loads a texture by name (from {@link SKIMAGE_DATA_DIR}) or by file path, as grey. Cached per path. */
export function loadTexture(texture: TextureName | string): Promise<Texture> {
  const isName = (TEXTURES as readonly string[]).includes(texture);
  const path = isName ? join(SKIMAGE_DATA_DIR, `${texture}.png`) : texture;
  let p = textureCache.get(path);
  if (!p) {
    p = (async () => {
      try {
        const { data, info } = await sharp(path).removeAlpha().toColourspace('b-w').raw().toBuffer({ resolveWithObject: true });
        const name = isName ? texture : path.replace(/^.*[\\/]/, '').replace(/\.[^.]*$/, '');
        return { name, width: info.width, height: info.height, grey: new Uint8Array(data.buffer, data.byteOffset, info.width * info.height) };
      } catch (e) {
        const hint = isName ? ' (install the Debian package python3-skimage, see deploy/setup.sh)' : '';
        throw new DatasetError(/missing/i.test(describeCause(e)) ? 'missing' : 'unreadable', path, `texture ${path} cannot be read: ${describeCause(e)}${hint}`, { cause: e });
      }
    })();
    p.catch(() => textureCache.delete(path));
    textureCache.set(path, p);
  }
  return p;
}

/** Training crops come from the top half, test crops (and demo parts) from the bottom half. */
export function textureRegions(t: Pick<Texture, 'width' | 'height'>): { train: Region; test: Region } {
  const mid = Math.floor(t.height / 2);
  return { train: { x0: 0, y0: 0, x1: t.width, y1: mid }, test: { x0: 0, y0: mid, x1: t.width, y1: t.height } };
}

function checkCropSize(t: Texture, size: number): void {
  const { train, test } = textureRegions(t);
  const max = Math.min(train.x1 - train.x0, train.y1 - train.y0, test.y1 - test.y0);
  if (!Number.isInteger(size) || size < 16 || size > max) {
    throw new DatasetError('invalid-option', t.name, `crop size ${size} does not fit texture ${t.name} (${t.width}×${t.height}): it must be an integer in 16…${max}, so that training and test regions stay disjoint`);
  }
}

export type Augment = 'none' | 'flips' | 'dihedral';

export interface Crop {
  x: number;
  y: number;
  flipX: boolean;
  flipY: boolean;
  transpose: boolean;
}

/** A random crop position (and orientation, for training) inside a region. */
function drawCrop(rng: Rng, region: Region, size: number, augment: Augment): Crop {
  const x = rng.int(region.x0, region.x1 - size);
  const y = rng.int(region.y0, region.y1 - size);
  return {
    x,
    y,
    flipX: augment !== 'none' && rng.next() < 0.5,
    flipY: augment !== 'none' && rng.next() < 0.5,
    transpose: augment === 'dihedral' && rng.next() < 0.5,
  };
}

/** The crop as float grey [size, size]. */
function cutCrop(t: Texture, c: Crop, size: number): Float32Array {
  const out = new Float32Array(size * size);
  for (let v = 0; v < size; v++) {
    for (let u = 0; u < size; u++) {
      let a = c.transpose ? v : u;
      let b = c.transpose ? u : v;
      if (c.flipX) a = size - 1 - a;
      if (c.flipY) b = size - 1 - b;
      out[v * size + u] = t.grey[(c.y + b) * t.width + (c.x + a)]!;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Shapes: anti-aliased alpha fields on a size×size grid.

interface Point {
  x: number;
  y: number;
}

/** A quadratic Bézier from p0 to p2 bent by `bend` (fraction of its length, sideways), as a polyline. */
function bentLine(p0: Point, p2: Point, bend: number, n = 48): Point[] {
  const mx = (p0.x + p2.x) / 2, my = (p0.y + p2.y) / 2;
  const dx = p2.x - p0.x, dy = p2.y - p0.y;
  const p1 = { x: mx - dy * bend, y: my + dx * bend };
  return Array.from({ length: n + 1 }, (_, i) => {
    const t = i / n;
    const a = (1 - t) * (1 - t), b = 2 * (1 - t) * t, c = t * t;
    return { x: a * p0.x + b * p1.x + c * p2.x, y: a * p0.y + b * p1.y + c * p2.y };
  });
}

/** Distance from (px, py) to a polyline, with the side (+1 left / −1 right of the travel direction). */
function polylineDistance(px: number, py: number, pts: Point[]): { d: number; side: number; t: number } {
  let best = Infinity, side = 1, bestT = 0;
  for (let i = 0; i + 1 < pts.length; i++) {
    const a = pts[i]!, b = pts[i + 1]!;
    const ex = b.x - a.x, ey = b.y - a.y;
    const len2 = ex * ex + ey * ey || 1e-12;
    const s = Math.max(0, Math.min(1, ((px - a.x) * ex + (py - a.y) * ey) / len2));
    const cx = a.x + s * ex - px, cy = a.y + s * ey - py;
    const d = Math.hypot(cx, cy);
    if (d < best) {
      best = d;
      side = ex * (py - a.y) - ey * (px - a.x) >= 0 ? 1 : -1;
      bestT = (i + s) / (pts.length - 1);
    }
  }
  return { d: best, side, t: bestT };
}

/** Bounding box of points, grown by `pad` and clipped to the image. */
function bbox(pts: Point[], pad: number, size: number): Region {
  const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
  return {
    x0: Math.max(0, Math.floor(Math.min(...xs) - pad)),
    y0: Math.max(0, Math.floor(Math.min(...ys) - pad)),
    x1: Math.min(size, Math.ceil(Math.max(...xs) + pad) + 1),
    y1: Math.min(size, Math.ceil(Math.max(...ys) + pad) + 1),
  };
}

/** An irregular blob: radius r0·(1 + Σ harmonics) around a centre, with an edge ramp of `soft` px. */
interface Blob {
  cx: number;
  cy: number;
  r0: number;
  harmonics: { k: number; amp: number; phase: number }[];
  soft: number;
}

function makeBlob(rng: Rng, cx: number, cy: number, r0: number, soft: number): Blob {
  const harmonics = [2, 3, 4, 5].map((k) => ({ k, amp: rng.range(0, 0.22 / (k - 1)), phase: rng.range(0, 2 * Math.PI) }));
  return { cx, cy, r0, harmonics, soft };
}

/** Signed distance-like value inside positive: (r(θ) − |p − c|) in px. */
function blobDepth(b: Blob, x: number, y: number): number {
  const dx = x - b.cx, dy = y - b.cy;
  const theta = Math.atan2(dy, dx);
  let r = 1;
  for (const h of b.harmonics) r += h.amp * Math.cos(h.k * theta + h.phase);
  return b.r0 * r - Math.hypot(dx, dy);
}

const clamp01 = (v: number): number => (v < 0 ? 0 : v > 1 ? 1 : v);

/** Below this alpha a pixel is left untouched (and outside the mask): no invisible mask fringe. */
const ALPHA_FLOOR = 0.05;

// ---------------------------------------------------------------------------------------------------------
// Defects. Each edits the three float planes (HWC, 0…255) in place and marks the pixels it changed.

interface Canvas {
  size: number;
  grey: Float32Array;
  rgb: Float32Array;
  mask: Uint8Array;
}

export interface DefectInfo {
  type: DefectType;
  /** Human-readable variant, e.g. "bright", "dark stain", "rust tint". */
  variant: string;
  /** Mask pixels / image pixels. */
  area: number;
}

/** A start/end pair of length `len` inside the safe margin, at a random angle. */
function placeSegment(rng: Rng, size: number, len: number, margin: number): [Point, Point] {
  for (let attempt = 0; attempt < 100; attempt++) {
    const angle = rng.range(0, Math.PI);
    const cx = rng.range(margin + len / 2, size - margin - len / 2);
    const cy = rng.range(margin, size - margin);
    const hx = (Math.cos(angle) * len) / 2, hy = (Math.sin(angle) * len) / 2;
    const p0 = { x: cx - hx, y: cy - hy }, p2 = { x: cx + hx, y: cy + hy };
    if ([p0, p2].every((p) => p.x >= margin && p.x <= size - margin && p.y >= margin && p.y <= size - margin)) return [p0, p2];
  }
  return [{ x: margin, y: size / 2 }, { x: margin + len, y: size / 2 }];
}

/** Mean grey under the pixels where `weight` > 0.5 (for picking a visible polarity). */
function meanUnder(c: Canvas, region: Region, weight: (x: number, y: number) => number): number {
  let s = 0, n = 0;
  for (let y = region.y0; y < region.y1; y++) {
    for (let x = region.x0; x < region.x1; x++) {
      if (weight(x, y) > 0.5) {
        s += c.grey[y * c.size + x]!;
        n++;
      }
    }
  }
  return n ? s / n : 128;
}

function setPixel(c: Canvas, i: number, r: number, g: number, b: number): void {
  c.rgb[3 * i] = r;
  c.rgb[3 * i + 1] = g;
  c.rgb[3 * i + 2] = b;
  c.mask[i] = 1;
}

/** A thin curved line, bright (a fresh scratch in a dark surface) or dark (a scratch filled with dirt). */
function drawScratch(c: Canvas, rng: Rng): string {
  const s = c.size / 256;
  const width = rng.range(2, 4) * s;
  const len = rng.range(0.4, 0.7) * c.size;
  const [p0, p2] = placeSegment(rng, c.size, len, 0.08 * c.size);
  const pts = bentLine(p0, p2, rng.range(-0.3, 0.3));
  const box = bbox(pts, width + 2, c.size);
  const alphaAt = (x: number, y: number): { a: number; t: number } => {
    const { d, t } = polylineDistance(x + 0.5, y + 0.5, pts);
    // Taper the ends a little (real scratches fade in and out) but keep the body fully opaque.
    const taper = clamp01(Math.min(t, 1 - t) / 0.08);
    return { a: clamp01(width / 2 + 0.5 - d) * (0.55 + 0.45 * taper), t };
  };
  const mean = meanUnder(c, box, (x, y) => alphaAt(x, y).a);
  let bright = rng.next() < 0.5;
  if (bright ? mean > 150 : mean < 105) bright = !bright; // keep ≥ ~80 grey levels of contrast
  const target = bright ? rng.range(225, 250) : rng.range(8, 30);
  for (let y = box.y0; y < box.y1; y++) {
    for (let x = box.x0; x < box.x1; x++) {
      const { a } = alphaAt(x, y);
      if (a <= ALPHA_FLOOR) continue;
      const i = y * c.size + x;
      const v = c.grey[i]! + a * (target + rng.normal() * 6 - c.grey[i]!);
      setPixel(c, i, v, v, v);
    }
  }
  return bright ? 'bright' : 'dark';
}

/** 1–3 stains: darker (oil, water) with a darker rim, or brighter deposits (dust, paint) covering the grain. */
function drawSpot(c: Canvas, rng: Rng): string {
  const total = rng.range(0.012, 0.035) * c.size * c.size;
  const count = rng.int(1, 3);
  const dark = rng.next() < 0.5;
  const margin = 0.1 * c.size;
  const strength = dark ? rng.range(0.5, 0.7) : rng.range(0.65, 0.85);
  const target = rng.range(205, 240);
  for (let k = 0; k < count; k++) {
    const r0 = Math.sqrt(total / count / Math.PI);
    const blob = makeBlob(rng, rng.range(margin + r0, c.size - margin - r0), rng.range(margin + r0, c.size - margin - r0), r0, rng.range(1.2, 2.5) * (c.size / 256));
    const reach = r0 * 1.6 + blob.soft + 2;
    for (let y = Math.max(0, Math.floor(blob.cy - reach)); y < Math.min(c.size, Math.ceil(blob.cy + reach)); y++) {
      for (let x = Math.max(0, Math.floor(blob.cx - reach)); x < Math.min(c.size, Math.ceil(blob.cx + reach)); x++) {
        const depth = blobDepth(blob, x + 0.5, y + 0.5);
        const a = clamp01(depth / blob.soft + 0.5);
        if (a <= ALPHA_FLOOR) continue;
        const i = y * c.size + x;
        const g = c.rgb[3 * i]!; // overlapping blobs compound, as real stains do
        let v: number;
        if (dark) {
          const rim = Math.exp(-(((depth - 1.5 * blob.soft) / (1.5 * blob.soft)) ** 2)) * 0.25; // coffee-ring edge
          v = g * (1 - a * Math.min(0.9, strength + rim));
        } else {
          v = g + a * strength * (target - g);
        }
        setPixel(c, i, v, v, v);
      }
    }
  }
  return `${dark ? 'dark' : 'bright'} stain ×${count}`;
}

/** A cut: a dark gap with a lit lip on one side and a shadowed edge on the other. */
function drawCut(c: Canvas, rng: Rng): string {
  const s = c.size / 256;
  const width = rng.range(3, 6) * s;
  const len = rng.range(0.25, 0.45) * c.size;
  const [p0, p2] = placeSegment(rng, c.size, len, 0.1 * c.size);
  const pts = bentLine(p0, p2, rng.range(-0.08, 0.08));
  const lip = 2 * s;
  const box = bbox(pts, width / 2 + lip + 2, c.size);
  const gap = rng.range(5, 25);
  const lit = rng.next() < 0.5 ? 1 : -1;
  for (let y = box.y0; y < box.y1; y++) {
    for (let x = box.x0; x < box.x1; x++) {
      const { d, side, t } = polylineDistance(x + 0.5, y + 0.5, pts);
      const taper = clamp01(Math.min(t, 1 - t) / 0.05);
      const core = clamp01(width / 2 + 0.5 - d) * (0.6 + 0.4 * taper);
      const edge = clamp01(1 - Math.abs(d - width / 2 - lip / 2) / lip) * taper;
      if (core <= ALPHA_FLOOR && edge <= ALPHA_FLOOR) continue;
      const i = y * c.size + x;
      const g = c.grey[i]!;
      const edgeShift = side === lit ? 70 : -45;
      const v = g + core * (gap - g) + (1 - core) * edge * edgeShift;
      setPixel(c, i, v, v, v);
    }
  }
  return lit > 0 ? 'lip left' : 'lip right';
}

/** A soft region of discoloration: a tint (rust, bluish) or a brightness change (bleached, darkened). */
function drawColor(c: Canvas, rng: Rng): string {
  const area = rng.range(0.02, 0.05) * c.size * c.size;
  const r0 = Math.sqrt(area / Math.PI);
  const margin = 0.1 * c.size;
  const blob = makeBlob(rng, rng.range(margin + r0, c.size - margin - r0), rng.range(margin + r0, c.size - margin - r0), r0, rng.range(3, 6) * (c.size / 256));
  const variants: { name: string; f: (g: number) => [number, number, number] }[] = [
    { name: 'rust tint', f: (g) => [g * 1.3 + 14, g * 1.02 + 3, g * 0.65] },
    { name: 'blue tint', f: (g) => [g * 0.7, g * 0.95, g * 1.3 + 14] },
    { name: 'green tint', f: (g) => [g * 0.75, g * 1.2 + 10, g * 0.75] },
    { name: 'bleached', f: (g) => { const v = g * 0.55 + 110; return [v, v, v]; } },
    { name: 'darkened', f: (g) => { const v = g * 0.45; return [v, v, v]; } },
  ];
  const variant = rng.pick(variants);
  const reach = r0 * 1.6 + blob.soft + 2;
  for (let y = Math.max(0, Math.floor(blob.cy - reach)); y < Math.min(c.size, Math.ceil(blob.cy + reach)); y++) {
    for (let x = Math.max(0, Math.floor(blob.cx - reach)); x < Math.min(c.size, Math.ceil(blob.cx + reach)); x++) {
      const a = clamp01(blobDepth(blob, x + 0.5, y + 0.5) / blob.soft + 0.5);
      if (a <= ALPHA_FLOOR) continue;
      const i = y * c.size + x;
      const g = c.grey[i]!;
      const [r, gg, b] = variant.f(g);
      setPixel(c, i, g + a * (r - g), g + a * (gg - g), g + a * (b - g));
    }
  }
  return variant.name;
}

const DRAW: Record<DefectType, (c: Canvas, rng: Rng) => string> = { scratch: drawScratch, spot: drawSpot, cut: drawCut, color: drawColor };

// ---------------------------------------------------------------------------------------------------------
// Parts.

export interface Part {
  /** [size, size, 3] 8-bit RGB. */
  rgb: Uint8Array;
  /** [size, size] 0/1, null for a good part. */
  mask: Uint8Array | null;
  /** Where the crop came from (texture pixels, before flips). */
  crop: Crop;
  defect: DefectInfo | null;
}

function render(t: Texture, crop: Crop, size: number, defect: DefectType | null, rng: Rng): Part {
  const grey = cutCrop(t, crop, size);
  const rgb = new Float32Array(size * size * 3);
  for (let i = 0; i < grey.length; i++) rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = grey[i]!;
  let info: DefectInfo | null = null;
  let mask: Uint8Array | null = null;
  if (defect) {
    const canvas: Canvas = { size, grey, rgb, mask: new Uint8Array(size * size) };
    const variant = DRAW[defect](canvas, rng);
    mask = canvas.mask;
    let n = 0;
    for (const m of mask) n += m;
    info = { type: defect, variant, area: n / mask.length };
  }
  const out = new Uint8Array(rgb.length);
  for (let i = 0; i < rgb.length; i++) out[i] = Math.max(0, Math.min(255, Math.round(rgb[i]!)));
  return { rgb: out, mask, crop, defect: info };
}

export interface MakePartOptions {
  /** A texture from {@link loadTexture}. */
  texture: Texture;
  /** Edge length in texture pixels (= image pixels). */
  size: number;
  /** The defect to draw, or null/undefined for a good part. */
  defect?: DefectType | null;
  seed: number;
}

/**
 * One inspection "part" in memory, cut from the test (bottom) region of the texture: good, or with one
 * defect and its mask. Synchronous once the texture is loaded, so a simulated line can make parts at frame
 * rate. The crop position depends on the seed only, so `defect: null` with the same seed gives the good
 * part the defective one was made from.
 */
export function makePart(opts: MakePartOptions): Part {
  checkCropSize(opts.texture, opts.size);
  const rng = makeRng(opts.seed);
  const crop = drawCrop(rng, textureRegions(opts.texture).test, opts.size, 'none');
  return render(opts.texture, crop, opts.size, opts.defect ?? null, rng);
}

/** A training crop (top region, optionally flipped/rotated). */
export function makeTrainCrop(opts: { texture: Texture; size: number; seed: number; augment?: Augment }): Part {
  checkCropSize(opts.texture, opts.size);
  const rng = makeRng(opts.seed);
  const crop = drawCrop(rng, textureRegions(opts.texture).train, opts.size, opts.augment ?? 'flips');
  return render(opts.texture, crop, opts.size, null, rng);
}

// ---------------------------------------------------------------------------------------------------------
// Dataset trees.

/**
 * Defaults: 256 px crops (the `edge` preset's input, so no resampling between texture and model), 200
 * training crops (the "200 images" training benchmark), 40 good and 4 × 15 defective test images:
 * the size of an MVTec AD texture class's test set (e.g. carpet: 28 good, 89 defective), where one
 * mis-ranked pair moves the AUROC by 1/2400 — fine enough to check "≥ 0.98".
 * Augmentation 'flips' (mirror left-right / up-down): more variety from a 512×256 training strip while
 * keeping orientation-bound structure (brick courses are horizontal) in the orientation the test shows;
 * 'dihedral' adds 90° turns, for isotropic textures.
 */
export const TEXTURE_DEFAULTS = { size: 256, trainCount: 200, testGoodCount: 40, testDefectCount: 15, seed: 1, augment: 'flips' as Augment };

export interface TextureDatasetOptions {
  texture: TextureName | string;
  /** Class folder to write (MVTec AD layout). Replaced atomically if it exists. */
  out: string;
  size?: number;
  trainCount?: number;
  testGoodCount?: number;
  /** Test images per defect type. */
  testDefectCount?: number;
  seed?: number;
  augment?: Augment;
  /** Defect types to generate (default all four). */
  types?: readonly DefectType[];
}

export interface TextureDatasetSummary {
  root: string;
  texture: string;
  size: number;
  train: number;
  testGood: number;
  testDefect: Record<string, number>;
  /** Mean mask area per defect type (fraction of the image). */
  meanArea: Record<string, number>;
}

/** 8-bit PNG; single-channel when the image is grey (every part but tinted ones), which is a third of the bytes. */
async function writePng(file: string, rgb: Uint8Array, size: number): Promise<void> {
  let grey = true;
  for (let i = 0; i < rgb.length && grey; i += 3) grey = rgb[i] === rgb[i + 1] && rgb[i] === rgb[i + 2];
  if (grey) {
    const g = new Uint8Array(size * size);
    for (let i = 0; i < g.length; i++) g[i] = rgb[3 * i]!;
    await sharp(g, { raw: { width: size, height: size, channels: 1 } }).toColourspace('b-w').png().toFile(file);
  } else {
    await sharp(rgb, { raw: { width: size, height: size, channels: 3 } }).png().toFile(file);
  }
}

async function writeMask(file: string, mask: Uint8Array, size: number): Promise<void> {
  const m = new Uint8Array(mask.length);
  for (let i = 0; i < m.length; i++) m[i] = mask[i] ? 255 : 0;
  await sharp(m, { raw: { width: size, height: size, channels: 1 } }).toColourspace('b-w').png().toFile(file);
}

/**
 * Writes an MVTec AD tree for one texture:
 *   out/train/good/NNN.png, out/test/good/NNN.png, out/test/<type>/NNN.png,
 *   out/ground_truth/<type>/NNN_mask.png (0/255), out/generation.json (options and every image's crop/defect).
 */
export async function writeTextureDataset(opts: TextureDatasetOptions): Promise<TextureDatasetSummary> {
  const o = { ...TEXTURE_DEFAULTS, ...Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)) } as Required<TextureDatasetOptions>;
  const types = opts.types ?? DEFECT_TYPES;
  for (const k of ['trainCount', 'testGoodCount', 'testDefectCount'] as const) {
    if (!Number.isInteger(o[k]) || o[k] < 0) throw new DatasetError('invalid-option', o.out, `${k} must be a non-negative integer, got ${o[k]}`);
  }
  const texture = await loadTexture(o.texture);
  checkCropSize(texture, o.size);
  const width = (n: number): number => Math.max(3, String(Math.max(0, n - 1)).length);
  const name = (i: number, n: number): string => String(i).padStart(width(n), '0');
  type Job = { rel: string; file: string; part: () => Part; maskRel?: string };
  const jobs: Job[] = [];
  for (let i = 0; i < o.trainCount; i++) {
    jobs.push({ rel: 'train/good', file: `${name(i, o.trainCount)}.png`, part: () => makeTrainCrop({ texture, size: o.size, seed: deriveSeed(o.seed, texture.name, 'train', i), augment: o.augment }) });
  }
  for (let i = 0; i < o.testGoodCount; i++) {
    jobs.push({ rel: 'test/good', file: `${name(i, o.testGoodCount)}.png`, part: () => makePart({ texture, size: o.size, defect: null, seed: deriveSeed(o.seed, texture.name, 'test', 'good', i) }) });
  }
  for (const type of types) {
    for (let i = 0; i < o.testDefectCount; i++) {
      jobs.push({ rel: `test/${type}`, maskRel: `ground_truth/${type}`, file: `${name(i, o.testDefectCount)}.png`, part: () => makePart({ texture, size: o.size, defect: type, seed: deriveSeed(o.seed, texture.name, 'test', type, i) }) });
    }
  }
  const records: Record<string, unknown>[] = [];
  const areas: Record<string, number[]> = {};
  await writeTreeAtomically(o.out, async (staging) => {
    for (const d of new Set(jobs.flatMap((j) => (j.maskRel ? [j.rel, j.maskRel] : [j.rel])))) await mkdir(join(staging, d), { recursive: true });
    await mapLimit(jobs, 4, async (j, idx) => {
      const part = j.part();
      await writePng(join(staging, j.rel, j.file), part.rgb, o.size);
      if (j.maskRel && part.mask) await writeMask(join(staging, j.maskRel, j.file.replace(/\.png$/, '_mask.png')), part.mask, o.size);
      if (part.defect) (areas[part.defect.type] ??= []).push(part.defect.area);
      records[idx] = { file: `${j.rel}/${j.file}`, crop: part.crop, defect: part.defect };
    });
    const generation = {
      generator: 'ast-edge src/train/datasets/synthetic-defects.ts',
      texture: texture.name,
      source: (TEXTURES as readonly string[]).includes(o.texture) ? `${SKIMAGE_DATA_DIR}/${o.texture}.png (scikit-image, CC0)` : o.texture,
      regions: textureRegions(texture),
      options: { size: o.size, trainCount: o.trainCount, testGoodCount: o.testGoodCount, testDefectCount: o.testDefectCount, seed: o.seed, augment: o.augment, types },
      images: records,
    };
    await writeFile(join(staging, 'generation.json'), `${JSON.stringify(generation, null, 1)}\n`);
  });
  const meanArea = Object.fromEntries(Object.entries(areas).map(([k, v]) => [k, v.reduce((a, b) => a + b, 0) / v.length]));
  return {
    root: o.out,
    texture: texture.name,
    size: o.size,
    train: o.trainCount,
    testGood: o.testGoodCount,
    testDefect: Object.fromEntries(types.map((t) => [t, o.testDefectCount])),
    meanArea,
  };
}
