/**
 * Fresh weights for a new model (training from scratch, tests, benchmarks). Seeded, so the same seed
 * gives the same network on every machine.
 */
import { f32 } from '../onnx/tensor.js';
import type { ConvWeights, StudentWeights, TeacherWeights, BatchNormWeights } from './weights.js';

/** mulberry32: a tiny, fast, seedable PRNG (uniform in [0, 1)). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomPermutation(n: number, random: () => number): number[] {
  const p = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [p[i], p[j]] = [p[j]!, p[i]!];
  }
  return p;
}

/** PyTorch's default conv initialisation: U(−1/√fan_in, 1/√fan_in) for weights and bias. */
export function initConv(out: number, inCh: number, k: number, random: () => number): ConvWeights {
  const bound = 1 / Math.sqrt(inCh * k * k);
  const u = () => (2 * random() - 1) * bound;
  return {
    weight: f32([out, inCh, k, k], Array.from({ length: out * inCh * k * k }, u)),
    bias: f32([out], Array.from({ length: out }, u)),
  };
}

function initBatchNorm(channels: number): BatchNormWeights {
  return {
    weight: f32([channels], new Array(channels).fill(1)),
    bias: f32([channels]),
    runningMean: f32([channels]),
    runningVar: f32([channels], new Array(channels).fill(1)),
  };
}

export interface TeacherInit {
  channels: number;
  condChannels: number;
  hidden: number;
  kernelSizes: readonly number[];
  seed: number;
  /** γ of every subnet; 0 (the paper's initialisation) makes the flow the identity. */
  gamma?: number;
}

export function initTeacher(o: TeacherInit): TeacherWeights {
  const random = seededRandom(o.seed);
  const half = o.channels / 2;
  if (!Number.isInteger(half)) throw new Error(`the teacher needs an even channel count, got ${o.channels}`);
  return {
    blocks: o.kernelSizes.map((k) => {
      const subnet = () => ({
        gamma: o.gamma ?? 0,
        conv1: initConv(o.hidden, half + o.condChannels, k, random),
        conv2: initConv(o.channels, o.hidden, k, random),
      });
      return { permutation: randomPermutation(o.channels, random), s1: subnet(), s2: subnet() };
    }),
  };
}

export interface StudentInit {
  inChannels: number;
  outChannels: number;
  width: number;
  residualBlocks: number;
  seed: number;
}

export function initStudent(o: StudentInit): StudentWeights {
  const random = seededRandom(o.seed);
  return {
    conv1: initConv(o.width, o.inChannels, 3, random),
    res: Array.from({ length: o.residualBlocks }, () => ({
      l1: initConv(o.width, o.width, 3, random),
      bn1: initBatchNorm(o.width),
      l2: initConv(o.width, o.width, 3, random),
      bn2: initBatchNorm(o.width),
    })),
    conv2: initConv(o.outChannels, o.width, 3, random),
  };
}
