/**
 * A simple baseline on the same backbone features as AST: k-nearest-neighbour distance to the good
 * training features. Two forms:
 *  - `global`: each image's features averaged over pixels; score = mean distance to the k nearest
 *    training images;
 *  - `patch`: each pixel's feature vector against a memory bank of training pixel vectors (a seeded random
 *    subset); score = the largest nearest-neighbour distance over the image's pixels.
 * Distances are computed as ONNX MatMuls on ONNX Runtime.
 */
import * as ort from 'onnxruntime-node';
import { Graph } from '../onnx/graph.js';
import * as op from '../onnx/ops.js';
import { encodeModel } from '../onnx/serialize.js';
import { randomPermutation, seededRandom } from '../model/init.js';
import type { FeatureSet } from './feature-set.js';

export interface KnnOptions {
  variant: 'global' | 'patch';
  k?: number;
  /** Memory-bank size for `patch` (default 16384 vectors). */
  bankSize?: number;
  seed?: number;
}

/** [M, C] queries × [C, K] bank → [M, k] smallest Euclidean distances (ascending). */
function distanceModel(channels: number, bank: number, k: number): Uint8Array {
  const g = new Graph('knn');
  const q = g.input('q', 'float32', ['M', channels]);
  const bt = g.input('bank_t', 'float32', [channels, bank]);
  const bn = g.input('bank_sq', 'float32', [1, bank]);
  const qsq = op.reduce(g, 'ReduceSum', op.mul(g, q, q), [1], true);
  const cross = op.matmul(g, q, bt);
  const d2 = op.add(g, op.sub(g, qsq, op.mul(g, cross, op.scalar(g, 2))), bn);
  const d = g.op('Sqrt', [g.op('Relu', [d2])]);
  const [values] = g.node('TopK', [d, op.ints(g, [k])], { axis: { kind: 'int', value: 1 }, largest: { kind: 'int', value: 0 } }, { outputs: 2, dtypes: ['float32', 'int64'] });
  g.output(values!, 'nearest');
  return encodeModel(g);
}

/** Per-pixel vectors of one sample, [h·w, C] (channels-last). */
function pixelVectors(x: Float32Array, channels: number, plane: number): Float32Array {
  const out = new Float32Array(plane * channels);
  for (let c = 0; c < channels; c++) for (let p = 0; p < plane; p++) out[p * channels + c] = x[c * plane + p]!;
  return out;
}

function pooled(x: Float32Array, channels: number, plane: number): Float32Array {
  const out = new Float32Array(channels);
  for (let c = 0; c < channels; c++) {
    let s = 0;
    for (let p = 0; p < plane; p++) s += x[c * plane + p]!;
    out[c] = s / plane;
  }
  return out;
}

export async function knnScores(train: FeatureSet, test: FeatureSet, o: KnnOptions): Promise<number[]> {
  // Only backbone features: depth channels (if any) are left to AST.
  const channels = train.channels;
  const plane = train.height * train.width;
  const k = o.k ?? (o.variant === 'global' ? 3 : 1);
  let bankVectors: Float32Array[];
  if (o.variant === 'global') {
    bankVectors = train.x.map((x) => pooled(x, channels, plane));
  } else {
    const total = train.x.length * plane;
    const size = Math.min(o.bankSize ?? 16384, total);
    const pick = randomPermutation(total, seededRandom(o.seed ?? 7)).slice(0, size);
    bankVectors = pick.map((idx) => {
      const x = train.x[Math.floor(idx / plane)]!;
      const p = idx % plane;
      const v = new Float32Array(channels);
      for (let c = 0; c < channels; c++) v[c] = x[c * plane + p]!;
      return v;
    });
  }
  const K = bankVectors.length;
  if (K < k) throw new Error(`kNN needs at least ${k} training vectors, has ${K}`);
  const bt = new Float32Array(channels * K);
  const bsq = new Float32Array(K);
  bankVectors.forEach((v, j) => {
    let s = 0;
    for (let c = 0; c < channels; c++) {
      bt[c * K + j] = v[c]!;
      s += v[c]! * v[c]!;
    }
    bsq[j] = s;
  });
  const session = await ort.InferenceSession.create(distanceModel(channels, K, k), { logSeverityLevel: 3 });
  const bankFeeds = {
    bank_t: new ort.Tensor('float32', bt, [channels, K]),
    bank_sq: new ort.Tensor('float32', bsq, [1, K]),
  };
  const scores: number[] = [];
  try {
    for (const x of test.x) {
      const q = o.variant === 'global' ? pooled(x, channels, plane) : pixelVectors(x, channels, plane);
      const m = q.length / channels;
      const r = await session.run({ q: new ort.Tensor('float32', q, [m, channels]), ...bankFeeds });
      const nearest = r.nearest!.data as Float32Array;
      if (o.variant === 'global') {
        let s = 0;
        for (let i = 0; i < k; i++) s += nearest[i]!;
        scores.push(s / k);
      } else {
        let best = 0;
        for (let i = 0; i < m; i++) best = Math.max(best, nearest[i * k]!);
        scores.push(best);
      }
    }
  } finally {
    await session.release();
  }
  return scores;
}
