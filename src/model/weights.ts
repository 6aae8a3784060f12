/**
 * Teacher and student weights, and their mapping to the authors' PyTorch `state_dict` key layout.
 * Bundles store weights in exactly that layout (safetensors), so a reference checkpoint, a bundle
 * trained on the device and a fine-tuned bundle are the same kind of file.
 */
import { f32, i64, type HostTensor } from '../onnx/tensor.js';
import { numpyPermutation } from './numpy-permutation.js';

export interface ConvWeights {
  /** [out, in, k, k] */
  weight: HostTensor<'float32'>;
  /** [out] */
  bias: HostTensor<'float32'>;
}

export interface SubnetWeights {
  /** Learned output scale γ (initialised to 0 so the untrained flow is the identity). */
  gamma: number;
  conv1: ConvWeights;
  conv2: ConvWeights;
}

export interface CouplingWeights {
  /** Channel permutation applied before the coupling: output channel i is input channel permutation[i]. */
  permutation: readonly number[];
  s1: SubnetWeights;
  s2: SubnetWeights;
}

export interface TeacherWeights {
  blocks: CouplingWeights[];
}

export interface BatchNormWeights {
  weight: HostTensor<'float32'>;
  bias: HostTensor<'float32'>;
  runningMean: HostTensor<'float32'>;
  runningVar: HostTensor<'float32'>;
}

export interface ResidualWeights {
  l1: ConvWeights;
  bn1: BatchNormWeights;
  l2: ConvWeights;
  bn2: BatchNormWeights;
}

export interface StudentWeights {
  conv1: ConvWeights;
  res: ResidualWeights[];
  conv2: ConvWeights;
}

export class WeightsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WeightsError';
  }
}

type StateDict = Map<string, HostTensor>;

function take(sd: StateDict, key: string, source: string): HostTensor<'float32'> {
  const t = sd.get(key);
  if (!t) throw new WeightsError(`${source}: missing tensor "${key}"`);
  if (t.dtype !== 'float32') throw new WeightsError(`${source}: tensor "${key}" is ${t.dtype}, expected float32`);
  return t as HostTensor<'float32'>;
}

function takeConv(sd: StateDict, prefix: string, source: string): ConvWeights {
  const weight = take(sd, `${prefix}.weight`, source);
  const bias = take(sd, `${prefix}.bias`, source);
  if (weight.dims.length !== 4 || weight.dims[2] !== weight.dims[3]) {
    throw new WeightsError(`${source}: "${prefix}.weight" has shape [${weight.dims}], expected [out, in, k, k]`);
  }
  if (bias.dims.length !== 1 || bias.dims[0] !== weight.dims[0]) {
    throw new WeightsError(`${source}: "${prefix}.bias" has shape [${bias.dims}], expected [${weight.dims[0]}]`);
  }
  return { weight, bias };
}

/** Teacher blocks live at `module_list.<n>` in the reference (n = 3, 5, 7, 9 for four blocks). */
function coupling_indices(sd: StateDict): number[] {
  const found = new Set<number>();
  for (const key of sd.keys()) {
    const m = /^module_list\.(\d+)\.s1\.gamma$/.exec(key);
    if (m) found.add(Number(m[1]));
  }
  return [...found].sort((a, b) => a - b);
}

function toPermutation(t: HostTensor, key: string, channels: number, source: string): number[] {
  const values = Array.from(t.data as ArrayLike<number | bigint>, Number);
  const seen = new Set(values);
  if (values.length !== channels || seen.size !== channels || values.some((v) => v < 0 || v >= channels)) {
    throw new WeightsError(`${source}: "${key}" is not a permutation of ${channels} channels`);
  }
  return values;
}

export function teacherFromStateDict(sd: StateDict, source = 'teacher checkpoint'): TeacherWeights {
  const indices = coupling_indices(sd);
  if (indices.length === 0) throw new WeightsError(`${source}: no coupling blocks found (expected keys module_list.<n>.s1.gamma)`);
  const blocks = indices.map((n, i) => {
    const subnet = (s: 's1' | 's2'): SubnetWeights => {
      const g = take(sd, `module_list.${n}.${s}.gamma`, source);
      return {
        gamma: g.data[0] ?? 0,
        conv1: takeConv(sd, `module_list.${n}.${s}.conv1`, source),
        conv2: takeConv(sd, `module_list.${n}.${s}.conv2`, source),
      };
    };
    const s1 = subnet('s1');
    const s2 = subnet('s2');
    // s1 predicts scale and shift for x2, s2 for x1: together 2·C output channels.
    const channels = (s1.conv2.weight.dims[0]! + s2.conv2.weight.dims[0]!) / 2;
    const permKey = `perm.${i}`;
    const perm = sd.get(permKey);
    // Reference checkpoints do not store the permutations: they are NumPy's seed-i permutations.
    const permutation = perm ? toPermutation(perm, permKey, channels, source) : numpyPermutation(i, channels);
    return { permutation, s1, s2 };
  });
  return { blocks };
}

export function teacherToStateDict(t: TeacherWeights): StateDict {
  const sd: StateDict = new Map();
  t.blocks.forEach((b, i) => {
    const n = 3 + 2 * i;
    for (const s of ['s1', 's2'] as const) {
      const w = b[s];
      sd.set(`module_list.${n}.${s}.gamma`, f32([1], [w.gamma]));
      sd.set(`module_list.${n}.${s}.conv1.weight`, w.conv1.weight);
      sd.set(`module_list.${n}.${s}.conv1.bias`, w.conv1.bias);
      sd.set(`module_list.${n}.${s}.conv2.weight`, w.conv2.weight);
      sd.set(`module_list.${n}.${s}.conv2.bias`, w.conv2.bias);
    }
    sd.set(`perm.${i}`, i64([b.permutation.length], b.permutation));
  });
  return sd;
}

function takeBatchNorm(sd: StateDict, prefix: string, source: string): BatchNormWeights {
  return {
    weight: take(sd, `${prefix}.weight`, source),
    bias: take(sd, `${prefix}.bias`, source),
    runningMean: take(sd, `${prefix}.running_mean`, source),
    runningVar: take(sd, `${prefix}.running_var`, source),
  };
}

export function studentFromStateDict(sd: StateDict, source = 'student checkpoint'): StudentWeights {
  const resIndices = new Set<number>();
  for (const key of sd.keys()) {
    const m = /^res\.(\d+)\./.exec(key);
    if (m) resIndices.add(Number(m[1]));
  }
  const res = [...resIndices]
    .sort((a, b) => a - b)
    .map((i) => ({
      l1: takeConv(sd, `res.${i}.l1`, source),
      bn1: takeBatchNorm(sd, `res.${i}.bn1`, source),
      l2: takeConv(sd, `res.${i}.l2`, source),
      bn2: takeBatchNorm(sd, `res.${i}.bn2`, source),
    }));
  return { conv1: takeConv(sd, 'conv1', source), res, conv2: takeConv(sd, 'conv2', source) };
}

export function studentToStateDict(s: StudentWeights): StateDict {
  const sd: StateDict = new Map();
  const conv = (prefix: string, c: ConvWeights) => {
    sd.set(`${prefix}.weight`, c.weight);
    sd.set(`${prefix}.bias`, c.bias);
  };
  conv('conv1', s.conv1);
  conv('conv2', s.conv2);
  s.res.forEach((r, i) => {
    conv(`res.${i}.l1`, r.l1);
    conv(`res.${i}.l2`, r.l2);
    for (const [name, bn] of [['bn1', r.bn1], ['bn2', r.bn2]] as const) {
      sd.set(`res.${i}.${name}.weight`, bn.weight);
      sd.set(`res.${i}.${name}.bias`, bn.bias);
      sd.set(`res.${i}.${name}.running_mean`, bn.runningMean);
      sd.set(`res.${i}.${name}.running_var`, bn.runningVar);
    }
  });
  return sd;
}

/** Shapes read off the weights: what a checkpoint was trained with, whatever preset it came from. */
export interface TeacherShape {
  channels: number;
  condChannels: number;
  hidden: number;
  kernelSizes: number[];
}

export function teacherShape(t: TeacherWeights): TeacherShape {
  const first = t.blocks[0]!;
  const channels = first.permutation.length;
  const len1 = Math.floor(channels / 2);
  const len2 = channels - len1;
  const hidden = first.s2.conv1.weight.dims[0]!;
  const condChannels = first.s2.conv1.weight.dims[1]! - len2;
  t.blocks.forEach((b, i) => {
    // s2 reads x2 (len2) and predicts scale and shift for x1 (2·len1); s1 the other way round.
    for (const [s, inHalf, outHalf] of [[b.s1, len1, len2], [b.s2, len2, len1]] as const) {
      const [h, inCh] = s.conv1.weight.dims;
      const [out, hIn] = s.conv2.weight.dims;
      if (h !== hidden || inCh !== inHalf + condChannels || out !== 2 * outHalf || hIn !== hidden) {
        throw new WeightsError(`teacher block ${i}: subnet shapes [${s.conv1.weight.dims}] → [${s.conv2.weight.dims}] disagree with block 0`);
      }
    }
  });
  return { channels, condChannels, hidden, kernelSizes: t.blocks.map((b) => b.s1.conv1.weight.dims[2]!) };
}

export interface StudentShape {
  inChannels: number;
  outChannels: number;
  width: number;
  residualBlocks: number;
}

export function studentShape(s: StudentWeights): StudentShape {
  return {
    inChannels: s.conv1.weight.dims[1]!,
    width: s.conv1.weight.dims[0]!,
    outChannels: s.conv2.weight.dims[0]!,
    residualBlocks: s.res.length,
  };
}

/** Folds an inference-mode BatchNorm into the conv before it: y = γ(Wx + b − μ)/√(σ² + ε) + β. */
export function foldBatchNorm(conv: ConvWeights, bn: BatchNormWeights, eps: number): ConvWeights {
  const [out, inCh, k] = conv.weight.dims as [number, number, number, number];
  const per = inCh * k * k;
  const w = new Float32Array(conv.weight.data.length);
  const b = new Float32Array(out);
  for (let o = 0; o < out; o++) {
    const scale = bn.weight.data[o]! / Math.sqrt(bn.runningVar.data[o]! + eps);
    for (let j = 0; j < per; j++) w[o * per + j] = conv.weight.data[o * per + j]! * scale;
    b[o] = (conv.bias.data[o]! - bn.runningMean.data[o]!) * scale + bn.bias.data[o]!;
  }
  return { weight: f32(conv.weight.dims, w), bias: f32([out], b) };
}

/** Multiplies a conv's weights and bias by a scalar (γ of a coupling subnet folded for inference). */
export function scaleConv(conv: ConvWeights, factor: number): ConvWeights {
  return {
    weight: f32(conv.weight.dims, conv.weight.data.map((v) => v * factor)),
    bias: f32(conv.bias.dims, conv.bias.data.map((v) => v * factor)),
  };
}
