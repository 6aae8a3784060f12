/**
 * Heat-map images for operators: the anomaly map, upsampled to the frame and coloured on a fixed scale
 * (so a good part looks calm and a bad one hot, instead of every map being stretched to full range), laid
 * over the inspected frame, PNG-encoded by sharp (libvips, off the main thread).
 */
import sharp from 'sharp';
import type { AnomalyMap, InspectionOutcome } from './result-sink.js';

/** Colour stops on [0, 1]: dark blue, light blue, yellow at 0.5 (the threshold), orange, red. */
const STOPS: [number, number, number, number][] = [
  [0, 0, 0, 128],
  [0.25, 0, 128, 255],
  [0.5, 255, 255, 0],
  [0.75, 255, 128, 0],
  [1, 255, 0, 0],
];

function colour(x: number, out: number[]): void {
  let i = 1;
  while (i < STOPS.length - 1 && x > STOPS[i]![0]) i++;
  const [x0, r0, g0, b0] = STOPS[i - 1]!;
  const [x1, r1, g1, b1] = STOPS[i]!;
  const f = (x - x0) / (x1 - x0);
  out[0] = r0 + (r1 - r0) * f;
  out[1] = g0 + (g1 - g0) * f;
  out[2] = b0 + (b1 - b0) * f;
}

/** The colour scale in LUT_STEPS + 1 steps: r, g, b, opacity over a frame. */
const LUT_STEPS = 1024;
const LUT = (() => {
  const lut = new Float32Array((LUT_STEPS + 1) * 4);
  const c = [0, 0, 0];
  for (let i = 0; i <= LUT_STEPS; i++) {
    colour(i / LUT_STEPS, c);
    lut.set([c[0]!, c[1]!, c[2]!, 0.2 + (0.5 * i) / LUT_STEPS], i * 4);
  }
  return lut;
})();

export interface HeatmapImage {
  /** RGB, uint8, row-major. */
  data: Uint8Array;
  width: number;
  height: number;
}

/** Where output pixel i of n falls in a source of `size` samples (pixel centres aligned): lower index, upper, weight. */
function axis(n: number, size: number): { lo: Int32Array; hi: Int32Array; w: Float32Array; nearest: Int32Array } {
  const lo = new Int32Array(n);
  const hi = new Int32Array(n);
  const w = new Float32Array(n);
  const nearest = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const s = Math.min(size - 1, Math.max(0, ((i + 0.5) * size) / n - 0.5));
    lo[i] = Math.floor(s);
    hi[i] = Math.min(size - 1, lo[i]! + 1);
    w[i] = s - lo[i]!;
    nearest[i] = Math.min(size - 1, Math.floor(((i + 0.5) * size) / n));
  }
  return { lo, hi, w, nearest };
}

/**
 * The map, bilinearly upsampled, at colour v / scaleMax (the threshold at mid-scale when scaleMax = 2 ×
 * threshold; NaN drawn as hot), over the frame with opacity growing with the value (0.2 … 0.7); without a
 * frame, opaque at 8× the map. Drawn directly at the output size (the frame scaled to fit `maxSide`), so the
 * cost is bounded: ~ a few ms for 512 × 512 on the main thread.
 */
export function renderHeatmap(map: AnomalyMap, scaleMax: number, frame?: InspectionOutcome['frame'], maxSide = 512): HeatmapImage {
  const sourceW = frame?.width ?? map.width * 8;
  const sourceH = frame?.height ?? map.height * 8;
  const fit = Math.min(1, maxSide / Math.max(sourceW, sourceH));
  const width = Math.max(1, Math.round(sourceW * fit));
  const height = Math.max(1, Math.round(sourceH * fit));
  const xs = axis(width, map.width);
  const ys = axis(height, map.height);
  const fxs = frame ? axis(width, frame.width).nearest : null;
  const fys = frame ? axis(height, frame.height).nearest : null;
  const out = new Uint8Array(width * height * 3);
  const d = map.data;
  const mw = map.width;
  for (let y = 0; y < height; y++) {
    const top = ys.lo[y]! * mw;
    const bottom = ys.hi[y]! * mw;
    const wy = ys.w[y]!;
    const frameRow = fys ? fys[y]! * frame!.width : 0;
    for (let x = 0; x < width; x++) {
      const x0 = xs.lo[x]!;
      const x1 = xs.hi[x]!;
      const wx = xs.w[x]!;
      const v = (d[top + x0]! * (1 - wx) + d[top + x1]! * wx) * (1 - wy) + (d[bottom + x0]! * (1 - wx) + d[bottom + x1]! * wx) * wy;
      const t = v / scaleMax;
      const step = t > 0 ? (t < 1 ? Math.round(t * LUT_STEPS) : LUT_STEPS) : t === 0 || t < 0 ? 0 : LUT_STEPS;
      const l = step * 4;
      const o = (y * width + x) * 3;
      if (frame) {
        const a = LUT[l + 3]!;
        const f = (frameRow + fxs![x]!) * 3;
        out[o] = frame.data[f]! * (1 - a) + LUT[l]! * a + 0.5;
        out[o + 1] = frame.data[f + 1]! * (1 - a) + LUT[l + 1]! * a + 0.5;
        out[o + 2] = frame.data[f + 2]! * (1 - a) + LUT[l + 2]! * a + 0.5;
      } else {
        out[o] = LUT[l]! + 0.5;
        out[o + 1] = LUT[l + 1]! + 0.5;
        out[o + 2] = LUT[l + 2]! + 0.5;
      }
    }
  }
  return { data: out, width, height };
}

/** PNG bytes of an image (sharp: encoded off the main thread). */
export async function encodePng(image: HeatmapImage): Promise<Buffer> {
  const { data, width, height } = image;
  return sharp(Buffer.from(data.buffer, data.byteOffset, data.byteLength), { raw: { width, height, channels: 3 } })
    .png({ compressionLevel: 6 })
    .toBuffer();
}
