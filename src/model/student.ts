/**
 * The AST student: a plain conv net that regresses the teacher's z from the same features.
 *   conv3×3 → LeakyReLU → residual blocks → conv3×3 → C
 * Residual block: x + LeakyReLU(BN(conv(LeakyReLU(BN(conv(x)))))). For inference every BatchNorm is
 * folded into the conv before it, so the graph is convolutions and activations only.
 */
import { Graph, Value } from '../onnx/graph.js';
import * as op from '../onnx/ops.js';
import type { StudentParams } from '../config/model-schema.js';
import { asInitializers, type WeightSource } from './teacher-flow.js';
import { foldBatchNorm, type ConvWeights, type StudentWeights } from './weights.js';
import {
  defaultConvAlgorithm,
  directConvHWNC,
  fastConvDefaults,
  fromHWNC,
  inferSpatialSize,
  resolveConvAlgorithm,
  toHWNC,
  winogradConvHWNC,
  type ConvAlgorithm,
  type ConvAlgorithmOption,
} from './fast-conv.js';

export interface StudentBuildOptions {
  params: Pick<StudentParams, 'leakySlope' | 'bnEps'>;
  weightSource?: WeightSource;
  /**
   * How the 3×3 convolutions are computed: `direct` (ONNX Conv), `winograd` (F(4×4, 3×3) as MatMuls,
   * src/model/fast-conv.ts; ~4× fewer multiplies, within ~2e-6 relative of Conv), `auto` (Winograd for
   * convs wide enough to gain — `autoConvAlgorithm` — when the weights are baked in (no `weightSource`)
   * and the feature-map size is known, given or inferred from the graph), or a per-conv rule.
   * Unset: `defaultConvAlgorithm()` (normally `auto`).
   */
  convAlgorithm?: ConvAlgorithmOption;
  /** Feature-map size; inferred from the input's producers when omitted (needed by Winograd). */
  spatialSize?: { height: number; width: number };
  /**
   * Winograd output tile m of F(m×m, 3×3) (default `fastConvDefaults().studentTile`, normally 4).
   * 6 is ~10–15 % faster at batch 8 on 24×24 maps, slower at batch 1, with ~5× the (still small) error.
   */
  winogradTile?: number;
}

interface StudentConv {
  key: string;
  conv: ConvWeights;
}

/** The student's convs in order, BatchNorm folded (keys as in the reference checkpoints). */
function studentConvs(weights: StudentWeights, eps: number): { conv1: StudentConv; res: [StudentConv, StudentConv][]; conv2: StudentConv } {
  return {
    conv1: { key: 'conv1', conv: weights.conv1 },
    res: weights.res.map((r, i) => [
      { key: `res.${i}.l1_bn1`, conv: foldBatchNorm(r.l1, r.bn1, eps) },
      { key: `res.${i}.l2_bn2`, conv: foldBatchNorm(r.l2, r.bn2, eps) },
    ]),
    conv2: { key: 'conv2', conv: weights.conv2 },
  };
}

/** `input` is the student's concatenated input [P, F(, D)] of shape [N, inChannels, h, w]. */
export function buildStudentInference(g: Graph, input: Value, weights: StudentWeights, o: StudentBuildOptions): Value {
  const src = o.weightSource ?? asInitializers(g);
  const slope = o.params.leakySlope;
  const convs = studentConvs(weights, o.params.bnEps);
  const option = o.convAlgorithm ?? defaultConvAlgorithm();
  const all = [convs.conv1, ...convs.res.flat(), convs.conv2];
  const choice = new Map<string, ConvAlgorithm>(
    all.map((c) => {
      const [cout, cin, k] = c.conv.weight.dims as [number, number, number];
      const algo = option === 'auto' && o.weightSource ? 'direct' : resolveConvAlgorithm(option, { key: c.key, cin, cout, kernel: k });
      return [c.key, algo];
    }),
  );
  if ([...choice.values()].some((a) => a === 'winograd')) {
    const size = o.spatialSize ?? inferSpatialSize(g, input);
    if (size) return buildStudentHWNC(g, input, convs, choice, o, size);
    if (option !== 'auto') throw new Error('winograd convolution needs the feature-map size (spatialSize)');
  }
  const conv3 = (x: Value, c: StudentConv) => {
    const pad = (c.conv.weight.dims[2]! - 1) / 2;
    return op.conv(g, x, src(`${c.key}.weight`, c.conv.weight), src(`${c.key}.bias`, c.conv.bias), { pads: [pad, pad, pad, pad] });
  };
  let h = op.leakyRelu(g, conv3(input, convs.conv1), slope);
  convs.res.forEach(([l1, l2], i) => {
    const a = op.leakyRelu(g, conv3(h, l1), slope);
    const b = op.leakyRelu(g, conv3(a, l2), slope);
    h = op.add(g, h, b, `residual_${i}`);
  });
  return conv3(h, convs.conv2);
}

/**
 * The same network on HWNC tensors (one layout change in, one out; bias, LeakyReLU and the skip sums
 * work channels-last), each conv Winograd or — where the per-conv choice says so — a direct Conv.
 */
function buildStudentHWNC(
  g: Graph,
  input: Value,
  convs: ReturnType<typeof studentConvs>,
  choice: Map<string, ConvAlgorithm>,
  o: StudentBuildOptions,
  size: { height: number; width: number },
): Value {
  const slope = o.params.leakySlope;
  const src = o.weightSource ?? asInitializers(g);
  const conv3 = (x: Value, c: StudentConv) => {
    const bias = src(`${c.key}.bias`, c.conv.bias);
    if (choice.get(c.key) === 'direct') {
      const pad = (c.conv.weight.dims[2]! - 1) / 2;
      return directConvHWNC(g, x, src(`${c.key}.weight`, c.conv.weight), bias, 'zero', pad, size);
    }
    const weight = o.weightSource ? o.weightSource(`${c.key}.weight`, c.conv.weight) : c.conv.weight;
    return winogradConvHWNC(g, x, weight, bias, {
      ...size,
      padding: 'zero',
      tile: o.winogradTile ?? fastConvDefaults().studentTile,
      name: c.key.replace(/\./g, '_'),
    });
  };
  const inChannels = convs.conv1.conv.weight.dims[1]!;
  let h = op.leakyRelu(g, conv3(toHWNC(g, input, { channels: inChannels, ...size }), convs.conv1), slope);
  convs.res.forEach(([l1, l2], i) => {
    const a = op.leakyRelu(g, conv3(h, l1), slope);
    const b = op.leakyRelu(g, conv3(a, l2), slope);
    h = op.add(g, h, b, `residual_${i}`);
  });
  return fromHWNC(g, conv3(h, convs.conv2), { channels: convs.conv2.conv.weight.dims[0]!, ...size });
}
