/**
 * The AST teacher: a normalizing flow of conditional affine coupling blocks (Rudolph et al., 2023).
 *
 * Block i: permute channels, split x → (x1, x2), then
 *   (a2, t2) = s2([x2, P]);  y1 = exp(e(a2))·x1 + t2
 *   (a1, t1) = s1([y1, P]);  y2 = exp(e(a1))·x2 + t1
 * with the soft clamp e(a) = clamp·0.636·atan(a/clamp), output [y1, y2] and per-pixel
 * log|det J| = Σc e(a1) + Σc e(a2). Each subnet is edge-pad → conv k×k → ReLU → edge-pad → conv k×k, times γ.
 */
import { Graph, Value } from '../onnx/graph.js';
import * as op from '../onnx/ops.js';
import { i64, type HostTensor } from '../onnx/tensor.js';
import { scaleConv, type ConvWeights, type SubnetWeights, type TeacherWeights } from './weights.js';
import {
  constantConvMap,
  constantMap,
  defaultConvAlgorithm,
  directConvHWNC,
  fastConvDefaults,
  fromHWNC,
  inferSpatialSize,
  resolveConvAlgorithm,
  sliceInputChannels,
  toHWNC,
  winogradConvHWNC,
  type ConvAlgorithmOption,
} from './fast-conv.js';

/** The factor the reference multiplies atan by (≈ 2/π, kept as written for numerical parity). */
export const SOFT_CLAMP_FACTOR = 0.636;

const OUTPUT_LIMIT = 1e6;

/** x1 gets the first ⌊C/2⌋ channels, x2 the rest (odd C gives unequal halves, as in the reference). */
export function splitSizes(channels: number): [number, number] {
  const len1 = Math.floor(channels / 2);
  return [len1, channels - len1];
}

/**
 * Supplies a graph value for a named weight tensor. Inference graphs bake weights in as initializers;
 * training graphs (which update weights) pass them as graph inputs instead.
 */
export type WeightSource = (key: string, tensor: HostTensor) => Value;

export const asInitializers =
  (g: Graph): WeightSource =>
  (key, t) =>
    g.initializer(key.replace(/\./g, '_'), t);

export interface TeacherBuildOptions {
  clamp: number;
  /** Emit the per-pixel log-determinant (needed for the NLL, not for scoring). */
  withLogDet?: boolean;
  /** Fold γ into the second conv of each subnet (inference). */
  foldGamma?: boolean;
  weightSource?: WeightSource;
  /**
   * How the subnets' convolutions are computed: `direct` (Pad + ONNX Conv), `winograd` (src/model/fast-conv.ts:
   * F(6×6, 3×3) / F(4×4, 5×5) as MatMuls with the edge padding folded in; the forward flow then runs its
   * couplings channels-last), `auto` (Winograd for convs wide enough to gain, when the weights are baked in
   * and the map size is known), or a per-conv rule.
   * Unset: `defaultConvAlgorithm()` (normally `auto`). Training graphs (`weightSource`) resolve `auto` to direct.
   */
  convAlgorithm?: ConvAlgorithmOption;
  /** Feature-map size; inferred from the graph when omitted (needed by Winograd). */
  spatialSize?: { height: number; width: number };
  /** Winograd output tiles of the 3×3 and 5×5 subnets (default `fastConvDefaults()`: 6 and 4). */
  winogradTile?: { k3?: number; k5?: number };
}

/** A coupling subnet: its input half [N, len, h, w] (the condition is appended inside) → [N, 2·len', h, w]. */
type SubnetFn = (half: Value, w: SubnetWeights, prefix: string) => Value;

function subnet(g: Graph, input: Value, w: SubnetWeights, prefix: string, o: TeacherBuildOptions): Value {
  const src = o.weightSource ?? asInitializers(g);
  const k = w.conv1.weight.dims[2]!;
  const pad = (k - 1) / 2;
  const convLayer = (x: Value, c: ConvWeights, name: string) =>
    op.conv(g, op.padSpatial(g, x, pad, 'edge'), src(`${prefix}.${name}.weight`, c.weight), src(`${prefix}.${name}.bias`, c.bias));
  const hidden = op.relu(g, convLayer(input, w.conv1, 'conv1'));
  if (o.foldGamma ?? true) return convLayer(hidden, scaleConv(w.conv2, w.gamma), 'conv2');
  const out = convLayer(hidden, w.conv2, 'conv2');
  return op.mul(g, out, src(`${prefix}.gamma`, { dtype: 'float32', dims: [1], data: Float32Array.of(w.gamma) }));
}

function softClamp(g: Graph, a: Value, clamp: number): Value {
  const scaled = op.atan(g, op.mul(g, a, op.scalar(g, 1 / clamp, 'inv_clamp')));
  return op.mul(g, scaled, op.scalar(g, clamp * SOFT_CLAMP_FACTOR, 'clamp_scale'));
}

function sumChannels(g: Graph, x: Value): Value {
  return op.reduce(g, 'ReduceSum', x, [1], false);
}

export interface TeacherOutputs {
  z: Value;
  /** [N, h, w], present when `withLogDet`. */
  logDet?: Value;
}

/** A coupling subnet on HWNC tensors: [h, w, N, len] → [h, w, N, 2·len']. */
type HwncSubnetFn = (half: Value, w: SubnetWeights, prefix: string) => Value;

type SubnetPlan =
  | { kind: 'direct'; nchw: SubnetFn }
  | {
      kind: 'hwnc';
      nchw: SubnetFn;
      hwnc: HwncSubnetFn;
      size: { height: number; width: number };
      /** The log-scale half of every subnet output is already divided by the clamp (folded into conv2). */
      prescaled: boolean;
    };

/** conv with output channels [0, rows) multiplied by `factor` (host weights). */
function scaleOutputRows(c: ConvWeights, rows: number, factor: number): ConvWeights {
  const per = c.weight.data.length / c.weight.dims[0]!;
  const weight = Float32Array.from(c.weight.data);
  const bias = Float32Array.from(c.bias.data);
  for (let o = 0; o < rows; o++) {
    for (let j = 0; j < per; j++) weight[o * per + j] = weight[o * per + j]! * factor;
    bias[o] = bias[o]! * factor;
  }
  return { weight: { dtype: 'float32', dims: c.weight.dims, data: weight }, bias: { dtype: 'float32', dims: c.bias.dims, data: bias } };
}

/**
 * Chooses how each subnet is built. Direct: the original Pad + Conv subnet on [half, P]. Winograd (per
 * conv): subnets run on HWNC tensors (src/model/fast-conv.ts), with the edge padding folded into the
 * transforms; when P is a constant of the graph (the head's expanded positional encoding) and the weights
 * are baked in, conv1's share of P is computed at build time and added as a map instead of concatenating P
 * to every subnet input, and 1/clamp of the soft clamp is folded into conv2's log-scale rows.
 */
function subnetPlan(g: Graph, x: Value, pos: Value, weights: TeacherWeights, o: TeacherBuildOptions): SubnetPlan {
  const option = o.convAlgorithm ?? defaultConvAlgorithm();
  const direct: SubnetPlan = { kind: 'direct', nchw: (half, w, prefix) => subnet(g, op.concat(g, [half, pos], 1), w, prefix, o) };
  if (option === 'direct' || weights.blocks.length === 0) return direct;
  const custom = o.weightSource !== undefined;
  const first = weights.blocks[0]!.s1;
  const hidden = first.conv1.weight.dims[0]!;
  const channels = weights.blocks[0]!.permutation.length;
  const cond = first.conv1.weight.dims[1]! - splitSizes(channels)[0];
  const choose = (name: string, cin: number, cout: number, kernel: number) =>
    option === 'auto' && custom ? 'direct' : resolveConvAlgorithm(option, { key: name, cin, cout, kernel });
  const anyFast = weights.blocks.some((b) => {
    const k = b.s1.conv1.weight.dims[2]!;
    return choose('conv1', channels / 2 + cond, hidden, k) === 'winograd' || choose('conv2', hidden, channels, k) === 'winograd';
  });
  if (!anyFast) return direct;
  const size = o.spatialSize ?? inferSpatialSize(g, x) ?? inferSpatialSize(g, pos);
  if (!size) {
    if (option === 'auto') return direct;
    throw new Error('winograd convolution needs the feature-map size (spatialSize)');
  }
  const posConst = custom ? undefined : constantMap(g, pos);
  const usePosMap = posConst !== undefined && posConst.dims[1] === size.height && posConst.dims[2] === size.width;
  const prescaled = !custom;
  let posHWNC: Value | undefined;
  const tile = (k: number) =>
    k === 3 ? (o.winogradTile?.k3 ?? fastConvDefaults().teacherTileK3) : k === 5 ? (o.winogradTile?.k5 ?? fastConvDefaults().teacherTileK5) : undefined;
  const src = o.weightSource ?? asInitializers(g);

  const hwnc: HwncSubnetFn = (half, w, prefix) => {
    const k = w.conv1.weight.dims[2]!;
    const pad = (k - 1) / 2;
    const halfChannels = w.conv1.weight.dims[1]! - cond;
    const conv = (input: Value, weight: Value | HostTensor<'float32'>, bias: Value, cin: number, cout: number, key: string) => {
      if (choose(key, cin, cout, k) === 'direct') {
        const wv = weight instanceof Value ? weight : g.initializer(`${prefix}.${key}.weight`.replace(/\./g, '_'), weight);
        return directConvHWNC(g, input, wv, bias, 'edge', pad, size);
      }
      const t = tile(k);
      return winogradConvHWNC(g, input, weight, bias, { ...size, padding: 'edge', ...(t ? { tile: t } : {}), name: `${prefix}.${key}`.replace(/\./g, '_') });
    };
    let hid: Value;
    if (usePosMap) {
      // conv1([half, P]) = conv1_half(half) + (conv1_P(P) + b1): the second term is a constant map
      const map = constantConvMap(posConst, w.conv1.weight, w.conv1.bias, halfChannels, 'edge', pad);
      const bias = g.initializer(`${prefix}.conv1.pos_bias`.replace(/\./g, '_'), map);
      hid = conv(half, sliceInputChannels(w.conv1.weight, 0, halfChannels), bias, halfChannels, hidden, 'conv1');
    } else {
      posHWNC ??= toHWNC(g, pos, { channels: cond, ...size });
      const input = op.concat(g, [half, posHWNC], 3);
      const weight = custom ? src(`${prefix}.conv1.weight`, w.conv1.weight) : w.conv1.weight;
      hid = conv(input, weight, src(`${prefix}.conv1.bias`, w.conv1.bias), halfChannels + cond, hidden, 'conv1');
    }
    hid = op.relu(g, hid);
    const fold = o.foldGamma ?? true;
    let c2 = fold ? scaleConv(w.conv2, w.gamma) : w.conv2;
    const cout = c2.weight.dims[0]!;
    if (prescaled) c2 = scaleOutputRows(c2, cout / 2, 1 / o.clamp);
    const out = conv(hid, custom ? src(`${prefix}.conv2.weight`, c2.weight) : c2.weight, src(`${prefix}.conv2.bias`, c2.bias), hidden, cout, 'conv2');
    if (fold) return out;
    return op.mul(g, out, src(`${prefix}.gamma`, { dtype: 'float32', dims: [1], data: Float32Array.of(w.gamma) }));
  };
  const nchw: SubnetFn = (half, w, prefix) => {
    const halfChannels = w.conv1.weight.dims[1]! - cond;
    const out = hwnc(toHWNC(g, half, { channels: halfChannels, ...size }), w, prefix);
    return fromHWNC(g, out, { channels: w.conv2.weight.dims[0]!, ...size });
  };
  return { kind: 'hwnc', nchw, hwnc, size, prescaled };
}

function softClampPrescaled(g: Graph, aOverClamp: Value, clamp: number): Value {
  return op.mul(g, op.atan(g, aOverClamp), op.scalar(g, clamp * SOFT_CLAMP_FACTOR, 'clamp_scale'));
}

/**
 * The forward flow with every coupling on HWNC tensors: per block one Gather (channel planes, NCHW) and
 * one layout change in, one out; the splits, soft clamps and affine updates run channels-last.
 */
function buildTeacherForwardHWNC(
  g: Graph,
  x: Value,
  weights: TeacherWeights,
  o: TeacherBuildOptions,
  plan: Extract<SubnetPlan, { kind: 'hwnc' }>,
): TeacherOutputs {
  const { size } = plan;
  const clampA = (a: Value) => (plan.prescaled ? softClampPrescaled(g, a, o.clamp) : softClamp(g, a, o.clamp));
  let h = x;
  let logDet: Value | undefined;
  weights.blocks.forEach((block, i) => {
    const n = 3 + 2 * i;
    const channels = block.permutation.length;
    const [len1, len2] = splitSizes(channels);
    const permuted = op.gather(g, h, g.initializer(`perm_${i}`, i64([channels], block.permutation)), 1, `permute_${i}`);
    const [x1, x2] = op.split(g, toHWNC(g, permuted, { channels, ...size }), 3, [len1, len2]) as [Value, Value];

    const r2 = plan.hwnc(x2, block.s2, `module_list.${n}.s2`);
    const [a2raw, t2] = op.split(g, r2, 3, [len1, len1]) as [Value, Value];
    const a2 = clampA(a2raw);
    const y1 = op.add(g, op.mul(g, op.exp(g, a2), x1), t2);

    const r1 = plan.hwnc(y1, block.s1, `module_list.${n}.s1`);
    const [a1raw, t1] = op.split(g, r1, 3, [len2, len2]) as [Value, Value];
    const a1 = clampA(a1raw);
    const y2 = op.add(g, op.mul(g, op.exp(g, a1), x2), t1);

    h = op.clip(g, fromHWNC(g, op.concat(g, [y1, y2], 3, `coupling_${i}`), { channels, ...size }), -OUTPUT_LIMIT, OUTPUT_LIMIT);
    if (o.withLogDet) {
      const blockLogDet = op.add(g, op.reduce(g, 'ReduceSum', a1, [3], false), op.reduce(g, 'ReduceSum', a2, [3], false));
      logDet = logDet ? op.add(g, logDet, blockLogDet) : blockLogDet;
    }
  });
  if (!logDet) return { z: h };
  // [h, w, N] → [N, h, w]
  const flat = op.transpose(g, op.reshape(g, logDet, [size.height * size.width, -1]), [1, 0]);
  return { z: h, logDet: op.reshape(g, flat, [-1, size.height, size.width]) };
}

/** Forward pass x → z. `x` is [N, C, h, w]; `pos` is the positional encoding broadcast to [N, D, h, w]. */
export function buildTeacherForward(g: Graph, x: Value, pos: Value, weights: TeacherWeights, o: TeacherBuildOptions): TeacherOutputs {
  const plan = subnetPlan(g, x, pos, weights, o);
  if (plan.kind === 'hwnc') return buildTeacherForwardHWNC(g, x, weights, o, plan);
  const runSubnet = plan.nchw;
  let h = x;
  let logDet: Value | undefined;
  weights.blocks.forEach((block, i) => {
    const n = 3 + 2 * i; // reference key numbering
    const channels = block.permutation.length;
    const [len1, len2] = splitSizes(channels);
    h = op.gather(g, h, g.initializer(`perm_${i}`, i64([channels], block.permutation)), 1, `permute_${i}`);
    const [x1, x2] = op.split(g, h, 1, [len1, len2]) as [Value, Value];

    const r2 = runSubnet(x2, block.s2, `module_list.${n}.s2`);
    const [a2raw, t2] = op.split(g, r2, 1, [len1, len1]) as [Value, Value];
    const a2 = softClamp(g, a2raw, o.clamp);
    const y1 = op.add(g, op.mul(g, op.exp(g, a2), x1), t2);

    const r1 = runSubnet(y1, block.s1, `module_list.${n}.s1`);
    const [a1raw, t1] = op.split(g, r1, 1, [len2, len2]) as [Value, Value];
    const a1 = softClamp(g, a1raw, o.clamp);
    const y2 = op.add(g, op.mul(g, op.exp(g, a1), x2), t1);

    // The reference clamps each coupling's output to ±1e6 (a guard against overflow, inactive in practice).
    h = op.clip(g, op.concat(g, [y1, y2], 1, `coupling_${i}`), -OUTPUT_LIMIT, OUTPUT_LIMIT);
    if (o.withLogDet) {
      const blockLogDet = op.add(g, sumChannels(g, a1), sumChannels(g, a2));
      logDet = logDet ? op.add(g, logDet, blockLogDet) : blockLogDet;
    }
  });
  return { z: h, ...(logDet ? { logDet } : {}) };
}

function inversePermutation(p: readonly number[]): number[] {
  const inv = new Array<number>(p.length);
  p.forEach((src, dst) => (inv[src] = dst));
  return inv;
}

/** Inverse pass z → x: undoes the blocks in reverse order (used to check the flow and to sample). */
export function buildTeacherInverse(g: Graph, z: Value, pos: Value, weights: TeacherWeights, o: TeacherBuildOptions): Value {
  let h = z;
  const plan = subnetPlan(g, z, pos, weights, o);
  const inner = plan.nchw;
  // the inverse keeps NCHW couplings; a pre-scaled log-scale half gets its clamp back here
  const runSubnet: SubnetFn =
    plan.kind === 'hwnc' && plan.prescaled
      ? (half, w, prefix) => {
          const r = inner(half, w, prefix);
          const c = w.conv2.weight.dims[0]! / 2;
          const [a, t] = op.split(g, r, 1, [c, c]) as [Value, Value];
          return op.concat(g, [op.mul(g, a, op.scalar(g, o.clamp, 'clamp')), t], 1);
        }
      : inner;
  for (let i = weights.blocks.length - 1; i >= 0; i--) {
    const block = weights.blocks[i]!;
    const n = 3 + 2 * i;
    const [len1, len2] = splitSizes(block.permutation.length);
    const [y1, y2] = op.split(g, h, 1, [len1, len2]) as [Value, Value];

    const r1 = runSubnet(y1, block.s1, `module_list.${n}.s1`);
    const [a1raw, t1] = op.split(g, r1, 1, [len2, len2]) as [Value, Value];
    const x2 = op.mul(g, op.sub(g, y2, t1), op.exp(g, op.mul(g, softClamp(g, a1raw, o.clamp), op.scalar(g, -1))));

    const r2 = runSubnet(x2, block.s2, `module_list.${n}.s2`);
    const [a2raw, t2] = op.split(g, r2, 1, [len1, len1]) as [Value, Value];
    const x1 = op.mul(g, op.sub(g, y1, t2), op.exp(g, op.mul(g, softClamp(g, a2raw, o.clamp), op.scalar(g, -1))));

    const merged = op.concat(g, [x1, x2], 1);
    h = op.gather(g, merged, g.initializer(`unpermute_${i}`, i64([block.permutation.length], inversePermutation(block.permutation))), 1);
  }
  return h;
}
