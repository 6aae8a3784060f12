/**
 * Anomaly maps and image scores as graph ops: the per-pixel mean over channels of the squared
 * teacher–student distance, optionally masked (depth modes), aggregated to image scores, and upsampled
 * (with optional Gaussian smoothing) to the input size for display.
 */
import { Graph, Value } from '../onnx/graph.js';
import * as op from '../onnx/ops.js';
import { f32 } from '../onnx/tensor.js';

export interface AnomalyMap {
  /** [N, 1, h, w]: what is shown and what the max score reads. */
  map: Value;
  /** [N, 1, h, w]: what the mean score averages. */
  forMean: Value;
}

/**
 * [N, C, h, w] × 2 → per-pixel mean over channels of (z_teacher − z_student)².
 * With a foreground mask (depth modes) the reference weights the distance by the mask once for the mean
 * score and, at evaluation, once more for the map — so a fractional border pixel counts as mask²·d in
 * the map and max score. Kept as is for parity; for a binary mask both are the same.
 */
export function buildAnomalyMap(g: Graph, zTeacher: Value, zStudent: Value, mask?: Value): AnomalyMap {
  const diff = op.sub(g, zTeacher, zStudent);
  const distance = op.reduce(g, 'ReduceMean', op.mul(g, diff, diff), [1], true);
  if (!mask) return { map: distance, forMean: distance };
  const once = op.mul(g, distance, mask, 'masked_distance');
  return { map: op.mul(g, once, mask, 'masked_map'), forMean: once };
}

/** → { max: [N], mean: [N] } image scores */
export function buildImageScores(g: Graph, m: AnomalyMap): { max: Value; mean: Value } {
  return {
    max: op.reduce(g, 'ReduceMax', m.map, [1, 2, 3], false),
    mean: op.reduce(g, 'ReduceMean', m.forMean, [1, 2, 3], false),
  };
}

/** 1-D Gaussian taps, truncated at 4σ, normalised to sum 1. */
export function gaussianKernel(sigma: number): Float32Array {
  const radius = Math.max(1, Math.ceil(4 * sigma));
  const taps = new Float32Array(2 * radius + 1);
  let sum = 0;
  for (let i = -radius; i <= radius; i++) {
    const v = Math.exp(-(i * i) / (2 * sigma * sigma));
    taps[i + radius] = v;
    sum += v;
  }
  return taps.map((v) => v / sum);
}

/** [N, 1, h, w] → [N, 1, H, W]: bicubic upsampling (as the reference), then separable Gaussian smoothing (reflect border). */
export function buildUpsampledMap(g: Graph, map: Value, height: number, width: number, sigma: number): Value {
  const batch = op.slice(g, op.shape(g, map), [0], [2], [0]);
  const sizes = op.concat(g, [batch, op.ints(g, [height, width], 'map_size')], 0);
  let up = op.resizeBicubic(g, map, sizes);
  if (sigma > 0) {
    const taps = gaussianKernel(sigma);
    const r = (taps.length - 1) / 2;
    const pads = op.ints(g, [0, 0, r, r, 0, 0, r, r], 'smooth_pads');
    up = g.op('Pad', [up, pads], { mode: { kind: 'string', value: 'reflect' } }, { name: 'smooth_pad' });
    const kx = g.initializer('gauss_x', f32([1, 1, 1, taps.length], taps));
    const ky = g.initializer('gauss_y', f32([1, 1, taps.length, 1], taps));
    up = op.conv(g, op.conv(g, up, kx, null, { name: 'smooth_x' }), ky, null, { name: 'smooth_y' });
  }
  return up;
}
