import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  DepthError,
  cornerBackground,
  cornerMeans,
  dilateMask,
  downsampleMask,
  fillGaps,
  fitBackgroundPlane,
  foregroundMask,
  normalizeDepth,
  pixelUnshuffle,
  prepareDepth,
  resizeBilinear,
} from '../src/model/depth.js';

// ------------------------------------------------------------------------------------------------
// synthetic scene: tilted table z = 0.5 + 1e-4·x + 2e-4·y (metres), a box raised by 2 cm, some gaps
// ------------------------------------------------------------------------------------------------

const H = 48;
const W = 48;
const A = 1e-4;
const B = 2e-4;
const C0 = 0.5;
const BOX = { y0: 20, y1: 27, x0: 24, x1: 31, h: 0.02 }; // inclusive, 8×8 = 64 px
const plane = (x: number, y: number) => A * x + B * y + C0;
const inBox = (y: number, x: number) => y >= BOX.y0 && y <= BOX.y1 && x >= BOX.x0 && x <= BOX.x1;
const GAPS: Array<[number, number]> = [
  [10, 10], // isolated interior gap: all 8 neighbours valid
  [30, 8], [30, 9], [31, 8], [31, 9], // 2×2 hole
  [0, 5], // first row: never filled (reference quirk)
  [7, 0], // first column: never filled (reference quirk)
  [H - 1, 20], // last row: truncated window
  [1, 46], // inside the top-right 2×2 corner block
];

function scene(): Float32Array {
  const z = new Float32Array(H * W);
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) z[y * W + x] = plane(x, y) + (inBox(y, x) ? BOX.h : 0);
  for (const [y, x] of GAPS) z[y * W + x] = 0;
  return z;
}

const at = (a: ArrayLike<number>, y: number, x: number, w = W) => a[y * w + x]!;
const count = (a: ArrayLike<number>) => Array.from(a).reduce((s, v) => s + (v > 0 ? 1 : 0), 0);

function bounds(mask: ArrayLike<number>, h: number, w: number) {
  let y0 = h, y1 = -1, x0 = w, x1 = -1;
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) if (mask[y * w + x]! > 0) {
    y0 = Math.min(y0, y); y1 = Math.max(y1, y); x0 = Math.min(x0, x); x1 = Math.max(x1, x);
  }
  return { y0, y1, x0, x1 };
}

function expectDepthError(fn: () => unknown, code: string, message: RegExp) {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(DepthError);
    expect((e as DepthError).code).toBe(code);
    expect((e as DepthError).message).toMatch(message);
    return;
  }
  throw new Error('expected a DepthError');
}

// ------------------------------------------------------------------------------------------------

describe('fillGaps', () => {
  const filled = fillGaps(scene(), H, W);

  it('fills an interior gap with the mean of its 8 neighbours (= the plane value)', () => {
    expect(at(filled, 10, 10)).toBeCloseTo(plane(10, 10), 6);
    expect(at(filled, 1, 46)).toBeCloseTo(plane(46, 1), 6);
  });

  it('fills a 2×2 hole in the first pass from the 5 valid neighbours of each pixel', () => {
    // (30,8): neighbours (29,7..9) = v−2e-4+{−1e-4,0,+1e-4}, (30,7) = v−1e-4, (31,7) = v+1e-4 → v − 1.2e-4
    expect(at(filled, 30, 8)).toBeCloseTo(plane(8, 30) - 1.2e-4, 6);
    for (const [y, x] of [[30, 9], [31, 8], [31, 9]] as const) {
      expect(Math.abs(at(filled, y, x) - plane(x, y))).toBeLessThan(2e-4);
    }
  });

  it('uses a truncated window on the last row', () => {
    // window rows 46..47, cols 19..21: 2·v + 3·(v − 2e-4), over 5 → v − 1.2e-4
    expect(at(filled, H - 1, 20)).toBeCloseTo(plane(20, H - 1) - 1.2e-4, 6);
  });

  it('leaves zeros on the first row/column (reference quirk), fills them with borderQuirk: false', () => {
    expect(at(filled, 0, 5)).toBe(0);
    expect(at(filled, 7, 0)).toBe(0);
    const all = fillGaps(scene(), H, W, 3, { borderQuirk: false });
    expect(at(all, 0, 5)).toBeCloseTo(plane(5, 0) + 1.2e-4, 6);
    expect(at(all, 7, 0)).toBeCloseTo(plane(0, 7) + 0.6 * A, 6);
  });

  it('reads every pass from the previous one (a 5-wide hole closes one ring per pass)', () => {
    const z = new Float32Array(11 * 11).fill(1);
    for (let y = 3; y <= 7; y++) for (let x = 3; x <= 7; x++) z[y * 11 + x] = 0;
    expect(count(fillGaps(z, 11, 11, 1))).toBe(121 - 9);
    expect(count(fillGaps(z, 11, 11, 2))).toBe(121 - 1);
    expect(count(fillGaps(z, 11, 11, 3))).toBe(121);
    expect(Array.from(fillGaps(z, 11, 11, 3)).every((v) => Math.abs(v - 1) < 1e-7)).toBe(true);
  });

  it('treats non-finite values as gaps and does not modify its input', () => {
    const z = scene();
    z[10 * W + 10] = Number.NaN;
    const copy = Float32Array.from(z);
    expect(at(fillGaps(z, H, W), 10, 10)).toBeCloseTo(plane(10, 10), 6);
    expect(Number.isNaN(z[10 * W + 10]!)).toBe(true);
    expect(Array.from(z.subarray(0, 100))).toEqual(Array.from(copy.subarray(0, 100)));
  });

  it('refuses an all-invalid map', () => {
    expectDepthError(() => fillGaps(new Float32Array(16), 4, 4), 'no-valid-depth', /no valid/);
  });
});

describe('background', () => {
  it('recovers the least-squares plane from the corner patches to 1e-6 (gaps skipped)', () => {
    for (const size of [2, 4]) {
      const p = fitBackgroundPlane(scene(), H, W, size);
      expect(Math.abs(p.a - A)).toBeLessThan(1e-6);
      expect(Math.abs(p.b - B)).toBeLessThan(1e-6);
      expect(Math.abs(p.c - C0)).toBeLessThan(1e-6);
    }
  });

  it('refuses corner data that cannot define a plane', () => {
    const z = new Float32Array(16); // only one valid pixel per corner → 4 points, but make three of them zero
    z[0] = 1;
    expectDepthError(() => fitBackgroundPlane(z, 4, 4, 1), 'degenerate-plane', /at least 3/);
  });

  it('reference surface: 2×2 corner means placed at the corner pixels, bilinear in between', () => {
    const filled = fillGaps(scene(), H, W);
    const m = cornerMeans(filled, H, W);
    expect(m.topLeft).toBeCloseTo(plane(0.5, 0.5), 6);
    expect(m.topRight).toBeCloseTo(plane(W - 1.5, 0.5), 6);
    expect(m.bottomLeft).toBeCloseTo(plane(0.5, H - 1.5), 6);
    expect(m.bottomRight).toBeCloseTo(plane(W - 1.5, H - 1.5), 6);
    const bg = cornerBackground(filled, H, W);
    expect(at(bg, 0, 0)).toBeCloseTo(m.topLeft, 12);
    expect(at(bg, 0, W - 1)).toBeCloseTo(m.topRight, 12);
    expect(at(bg, H - 1, 0)).toBeCloseTo(m.bottomLeft, 12);
    expect(at(bg, H - 1, W - 1)).toBeCloseTo(m.bottomRight, 12);
    // a plane sampled at the corners stays a plane: at (y, x) it is plane(0.5 + x·(W−2)/(W−1), …)
    const u = 17 / (W - 1);
    const v = 29 / (H - 1);
    expect(at(bg, 29, 17)).toBeCloseTo(plane(0.5 + u * (W - 2), 0.5 + v * (H - 2)), 6);
  });

  it('corner means ignore zeros; an empty corner block is refused', () => {
    const z = new Float32Array(16).fill(2);
    z[0] = 0; // top-left block {0, 2, 2, 2} → 6 / 3
    expect(cornerMeans(z, 4, 4).topLeft).toBe(2);
    z[1] = z[4] = z[5] = 0;
    expectDepthError(() => cornerMeans(z, 4, 4), 'empty-corner', /top-left 2×2 corner block has no valid depth/);
  });
});

describe('foregroundMask and dilation', () => {
  const filled = fillGaps(scene(), H, W);

  it('|z − background| > 7e-3 is exactly the box (64 px), remaining gaps excluded', () => {
    for (const bg of [cornerBackground(filled, H, W), fitBackgroundPlane(filled, H, W, 2)]) {
      const fg = foregroundMask(filled, H, W, bg, 7e-3, 0);
      expect(count(fg)).toBe(64);
      expect(bounds(fg, H, W)).toEqual({ y0: 20, y1: 27, x0: 24, x1: 31 });
    }
  });

  it('dilated by 8 (SciPy anchoring: 4 px up/left, 3 px down/right) → 15×15 = 225 px', () => {
    const fg = foregroundMask(filled, H, W, cornerBackground(filled, H, W));
    expect(count(fg)).toBe(225);
    expect(bounds(fg, H, W)).toEqual({ y0: 16, y1: 30, x0: 20, x1: 34 });
  });

  it('dilateMask matches scipy.ndimage.binary_dilation(np.ones([k, k])) on single pixels', () => {
    const one = (y: number, x: number) => {
      const m = new Uint8Array(400);
      m[y * 20 + x] = 1;
      return m;
    };
    // values checked with SciPy 1.17: pixel (10,10) → rows/cols 6..13; (0,0) → 0..3; (19,19) → 15..19
    expect(bounds(dilateMask(one(10, 10), 20, 20, 8), 20, 20)).toEqual({ y0: 6, y1: 13, x0: 6, x1: 13 });
    expect(count(dilateMask(one(10, 10), 20, 20, 8))).toBe(64);
    expect(count(dilateMask(one(0, 0), 20, 20, 8))).toBe(16);
    expect(bounds(dilateMask(one(19, 19), 20, 20, 8), 20, 20)).toEqual({ y0: 15, y1: 19, x0: 15, x1: 19 });
    expect(bounds(dilateMask(one(10, 10), 20, 20, 3), 20, 20)).toEqual({ y0: 9, y1: 11, x0: 9, x1: 11 });
    expect(count(dilateMask(one(10, 10), 20, 20, 1))).toBe(1);
  });
});

describe('resize and mask downsampling (F.interpolate bilinear, align_corners=False)', () => {
  it('upsamples [[0,1],[2,3]] ×2 to the PyTorch values', () => {
    const out = resizeBilinear(Float32Array.from([0, 1, 2, 3]), 2, 2, 4, 4);
    expect(Array.from(out.subarray(0, 4))).toEqual([0, 0.25, 0.75, 1]);
    expect(Array.from(out.subarray(12, 16))).toEqual([2, 2.25, 2.75, 3]);
    expect(out[4]).toBeCloseTo(0.5, 7); // row 1: 0.75·row0 + 0.25·row1
  });

  it('downsamples ×2 to block means', () => {
    const x = Float32Array.from({ length: 16 }, (_, i) => i);
    expect(Array.from(resizeBilinear(x, 4, 4, 2, 2))).toEqual([2.5, 4.5, 10.5, 12.5]);
  });

  it('factor 8: each cell is the mean of the 2×2 pixels at the centre of its block, fractional', () => {
    const m = new Uint8Array(256);
    m[3 * 16 + 3] = 1;
    expect(Array.from(downsampleMask(m, 16, 16, 8))).toEqual([0.25, 0, 0, 0]);
    const top = new Uint8Array(256).fill(1, 0, 4 * 16); // rows 0..3 set: row 3 in, row 4 out
    expect(Array.from(downsampleMask(top, 16, 16, 8))).toEqual([0.5, 0.5, 0, 0]);
    expect(Array.from(downsampleMask(top, 16, 16, 8, { binarize: true }))).toEqual([1, 1, 0, 0]);
    const full = new Uint8Array(256).fill(1);
    expect(Array.from(downsampleMask(full, 16, 16, 8))).toEqual([1, 1, 1, 1]);
  });

  it('odd factor picks the centre pixel', () => {
    const m = new Uint8Array(36);
    m[1 * 6 + 4] = 1;
    m[4 * 6 + 1] = 1;
    m[0] = 1; // not a centre
    expect(Array.from(downsampleMask(m, 6, 6, 3))).toEqual([0, 1, 1, 0]);
  });

  it('refuses sizes not divisible by the factor', () => {
    expectDepthError(() => downsampleMask(new Uint8Array(20 * 16), 20, 16, 8), 'not-divisible', /H = 20 .* divisible by 8/);
  });
});

describe('pixelUnshuffle', () => {
  it('1×4×4, r = 2: channel i·r + j holds in[y·r + i, x·r + j]', () => {
    const x = Float32Array.from({ length: 16 }, (_, i) => i);
    //  0  1  2  3
    //  4  5  6  7
    //  8  9 10 11
    // 12 13 14 15
    expect(Array.from(pixelUnshuffle(x, 1, 4, 4, 2))).toEqual([0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15]);
  });

  it('C = 2: channel order c·r² + i·r + j (PyTorch), r = 4 gives one pixel per channel', () => {
    const x = Float32Array.from({ length: 32 }, (_, i) => i);
    expect(Array.from(pixelUnshuffle(x, 2, 4, 4, 4))).toEqual(Array.from(x));
    const y = pixelUnshuffle(x, 2, 4, 4, 2);
    expect(Array.from(y.subarray(4 * 4, 4 * 5))).toEqual([16, 18, 24, 26]); // c = 1, i = j = 0
  });

  it('refuses bad sizes', () => {
    expectDepthError(() => pixelUnshuffle(new Float32Array(24), 1, 4, 6, 4), 'not-divisible', /W = 6/);
    expectDepthError(() => pixelUnshuffle(new Float32Array(15), 1, 4, 4, 2), 'length-mismatch', /15 values/);
  });
});

describe('prepareDepth', () => {
  const out = prepareDepth(scene(), H, W);

  it('returns the shapes the model needs', () => {
    expect(out).toMatchObject({ height: 48, width: 48, featureHeight: 6, featureWidth: 6, depthChannels: 64 });
    expect(out.depth.length).toBe(48 * 48);
    expect(out.unshuffled.length).toBe(64 * 6 * 6);
    expect(out.mask.length).toBe(48 * 48);
    expect(out.featureMask.length).toBe(36);
    expect(count(out.foreground)).toBe(64);
    expect(count(out.mask)).toBe(225);
  });

  it('normalises as the reference: background 0, foreground (z − mean_fg)·100', () => {
    const mean = 0.5 + BOX.h + A * 27.5 + B * 23.5; // mean of the box
    expect(out.foregroundMean).toBeCloseTo(mean, 6);
    expect(at(out.depth, 5, 5)).toBe(0);
    expect(at(out.depth, 0, 5)).toBe(0); // unfilled gap: not foreground → 0
    expect(at(out.depth, 20, 24)).toBeCloseTo((plane(24, 20) + BOX.h - mean) * 100, 4);
    expect(at(out.depth, 27, 31)).toBeCloseTo((plane(31, 27) + BOX.h - mean) * 100, 4);
  });

  it('feature mask = bilinear ×1/8 of the dilated mask (rows 16..30, cols 20..34)', () => {
    const row = [0, 0, 0.5, 1, 0, 0];
    const zero = [0, 0, 0, 0, 0, 0];
    expect(Array.from(out.featureMask)).toEqual([...zero, ...zero, ...row, ...row, ...zero, ...zero]);
  });

  it('unshuffled[i·8 + j, y, x] = depth[8y + i, 8x + j]', () => {
    for (const [i, j, y, x] of [[4, 0, 2, 3], [7, 7, 3, 3], [0, 0, 2, 3]] as const) {
      expect(out.unshuffled[(i * 8 + j) * 36 + y * 6 + x]).toBe(at(out.depth, 8 * y + i, 8 * x + j));
    }
  });

  it('resizes to outputSize (depth bilinear, mask bilinear then binarised, then dilated)', () => {
    const small = prepareDepth(scene(), H, W, { outputSize: { height: 24, width: 24 }, dilation: 0 });
    expect(small).toMatchObject({ height: 24, width: 24, featureHeight: 3, featureWidth: 3 });
    // box rows 20..27 → 10..13, cols 24..31 → 12..15 (2×2 block means; binarised > 0)
    expect(bounds(small.mask, 24, 24)).toEqual({ y0: 10, y1: 13, x0: 12, x1: 15 });
    expect(at(small.depth, 11, 13, 24)).toBeCloseTo(
      (at(out.depth, 22, 26) + at(out.depth, 22, 27) + at(out.depth, 23, 26) + at(out.depth, 23, 27)) / 4,
      5,
    );
  });

  it('the least-squares plane option gives the same mask on this scene', () => {
    const p = prepareDepth(scene(), H, W, { background: 'plane', cornerSize: 4 });
    expect(Array.from(p.mask)).toEqual(Array.from(out.mask));
  });

  it('refuses an all-zero map, a flat scene and a bad feature stride with clear errors', () => {
    expectDepthError(() => prepareDepth(new Float32Array(64), 8, 8), 'no-valid-depth', /8×8 has no valid \(positive, finite\) pixel/);
    expectDepthError(() => prepareDepth(new Float32Array(64).fill(Number.NaN), 8, 8), 'no-valid-depth', /no valid/);
    expectDepthError(() => prepareDepth(new Float32Array(64).fill(0.5), 8, 8), 'no-foreground', /no foreground/);
    expectDepthError(() => prepareDepth(scene(), H, W, { featureStride: 5 }), 'not-divisible', /divisible by 5/);
    expectDepthError(() => prepareDepth(scene(), H, W + 1), 'length-mismatch', /expected H·W/);
  });

  it('normalizeDepth refuses an empty foreground', () => {
    expectDepthError(() => normalizeDepth(new Float32Array(4).fill(1), new Uint8Array(4), 2, 2), 'no-foreground', /no foreground/);
  });
});

// ------------------------------------------------------------------------------------------------
// parity with the PyTorch/NumPy oracle (tools/reference/make_fixture.py), when its fixture is present
// ------------------------------------------------------------------------------------------------

const FIXTURE = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'reference', 'rgbd');
const hasFixture = existsSync(join(FIXTURE, 'config.json')) && existsSync(join(FIXTURE, 'depth_raw.npy'));

/** Tiny .npy reader (little-endian, C order; f4/f8/u1/b1) → float64 values + shape. */
function readNpy(file: string): { shape: number[]; data: Float64Array } {
  const buf = readFileSync(join(FIXTURE, file));
  const major = buf[6]!;
  const hlen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.subarray(start, start + hlen).toString('latin1');
  const descr = /'descr':\s*'([^']+)'/.exec(header)![1]!;
  if (/'fortran_order':\s*True/.test(header)) throw new Error(`${file}: Fortran order`);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)![1]!.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  const body = buf.subarray(start + hlen);
  const bytes = new Uint8Array(body.byteLength);
  bytes.set(body);
  const raw =
    descr === '<f4' ? new Float32Array(bytes.buffer)
    : descr === '<f8' ? new Float64Array(bytes.buffer)
    : descr === '|u1' || descr === '|b1' ? bytes
    : null;
  if (!raw) throw new Error(`${file}: dtype ${descr} not supported`);
  return { shape, data: Float64Array.from(raw) };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe.skipIf(!hasFixture)('parity with the reference RGB-D fixture (test/fixtures/reference/rgbd)', () => {
  it('reproduces every intermediate of the depth preparation', () => {
    const cfg = JSON.parse(readFileSync(join(FIXTURE, 'config.json'), 'utf8'));
    const prep = cfg.depth_prep;
    const r = Math.round(Math.sqrt(cfg.depth_channels));
    const mapLen: number = cfg.H;
    const depthLen = mapLen * r;
    const dilation = Number(/(\d+)x\1 square/.exec(String(prep.dilate))?.[1] ?? 8);
    const raw = readNpy('depth_raw.npy');
    const [N, rh, rw] = raw.shape as [number, number, number];
    const keys = ['depth_filled', 'fg_raw', 'depth_normalized', 'depth_resized', 'fg_resized', 'fg_dilated', 'fg_down', 'depth_unshuffled'];
    const ref = Object.fromEntries(keys.map((k) => [k, readNpy(`${k}.npy`).data])); // all required
    const slice = (k: string, n: number, len: number) => ref[k]!.subarray(n * len, (n + 1) * len);
    expect(N).toBeGreaterThan(0);
    for (let n = 0; n < N; n++) {
      const z = Float32Array.from(raw.data.subarray(n * rh * rw, (n + 1) * rh * rw));
      const out = prepareDepth(z, rh, rw, {
        fillIterations: prep.n_fills,
        threshold: prep.bg_thresh,
        depthScale: prep.depth_scale,
        dilation,
        featureStride: r,
        outputSize: { height: depthLen, width: depthLen },
      });
      // measured: every comparison below is exact (0) after float32 storage; tolerances leave 1–3 ulp
      expect(maxAbsDiff(out.filled, slice('depth_filled', n, rh * rw))).toBeLessThan(1e-6);
      expect(maxAbsDiff(out.foreground, slice('fg_raw', n, rh * rw))).toBe(0);
      const { depth } = normalizeDepth(out.filled, out.foreground, rh, rw, prep.depth_scale);
      expect(maxAbsDiff(depth, slice('depth_normalized', n, rh * rw))).toBeLessThan(2e-5); // from float32 `filled`
      expect(maxAbsDiff(out.depth, slice('depth_resized', n, depthLen ** 2))).toBeLessThan(1e-6);
      const fgR = resizeBilinear(out.foreground, rh, rw, depthLen, depthLen).map((v) => (v > 0 ? 1 : 0));
      expect(maxAbsDiff(fgR, slice('fg_resized', n, depthLen ** 2))).toBe(0);
      expect(maxAbsDiff(out.mask, slice('fg_dilated', n, depthLen ** 2))).toBe(0);
      expect(maxAbsDiff(out.featureMask, slice('fg_down', n, mapLen ** 2))).toBeLessThan(1e-7);
      expect(maxAbsDiff(out.unshuffled, slice('depth_unshuffled', n, r * r * mapLen ** 2))).toBeLessThan(1e-6);
    }
  });
});
