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
import { defaultConvAlgorithm, fastConvDefaults, fromHWNC, inferSpatialSize, toHWNC, winogradConvHWNC, type ConvAlgorithm } from './fast-conv.js';

export interface StudentBuildOptions {
  params: Pick<StudentParams, 'leakySlope' | 'bnEps'>;
  weightSource?: WeightSource;
  /**
   * How the 3×3 convolutions are computed: `direct` (ONNX Conv), `winograd` (F(4×4, 3×3) as MatMuls,
   * src/model/fast-conv.ts; ~4× fewer multiplies, within ~1e-5 relative of Conv), or `auto` (default):
   * Winograd when the weights are baked in (no `weightSource`), the feature-map size is known (given or
   * inferred from the graph) and the student is wide enough for it to pay off; otherwise direct.
   * Unset: `defaultConvAlgorithm()` (normally `auto`).
   */
  convAlgorithm?: ConvAlgorithm | 'auto';
  /** Feature-map size; inferred from the input's producers when omitted (needed by Winograd). */
  spatialSize?: { height: number; width: number };
  /** Winograd output tile m of F(m×m, 3×3) (default `fastConvDefaults().studentTile`, normally 4). */
  winogradTile?: number;
  /** Winograd channel products: batched MatMul or per-position pre-packed MatMuls (see fast-conv.ts). */
  winogradGemm?: 'batched' | 'split';
  /** Winograd column transform (see fast-conv.ts). */
  winogradColumns?: 'transpose' | 'broadcast';
}

/** Below this width a direct Conv is as fast (measured on a 2-core AVX2 CPU; see bench/detector.bench.ts). */
export const STUDENT_WINOGRAD_MIN_WIDTH = 64;

/** `input` is the student's concatenated input [P, F(, D)] of shape [N, inChannels, h, w]. */
export function buildStudentInference(g: Graph, input: Value, weights: StudentWeights, o: StudentBuildOptions): Value {
  const src = o.weightSource ?? asInitializers(g);
  const slope = o.params.leakySlope;
  const algorithm = o.convAlgorithm ?? defaultConvAlgorithm();
  if (algorithm !== 'direct') {
    const size = o.spatialSize ?? inferSpatialSize(g, input);
    const width = weights.conv1.weight.dims[0]!;
    const wanted = algorithm === 'winograd' || (!o.weightSource && width >= STUDENT_WINOGRAD_MIN_WIDTH);
    if (wanted && size) return buildStudentWinograd(g, input, weights, o, size);
    if (algorithm === 'winograd') throw new Error('winograd convolution needs the feature-map size (spatialSize)');
  }
  const conv3 = (x: Value, c: ConvWeights, key: string) => {
    const pad = (c.weight.dims[2]! - 1) / 2;
    return op.conv(g, x, src(`${key}.weight`, c.weight), src(`${key}.bias`, c.bias), { pads: [pad, pad, pad, pad] });
  };
  let h = op.leakyRelu(g, conv3(input, weights.conv1, 'conv1'), slope);
  weights.res.forEach((r, i) => {
    const a = op.leakyRelu(g, conv3(h, foldBatchNorm(r.l1, r.bn1, o.params.bnEps), `res.${i}.l1_bn1`), slope);
    const b = op.leakyRelu(g, conv3(a, foldBatchNorm(r.l2, r.bn2, o.params.bnEps), `res.${i}.l2_bn2`), slope);
    h = op.add(g, h, b, `residual_${i}`);
  });
  return conv3(h, weights.conv2, 'conv2');
}

/**
 * The same network with every conv as Winograd on HWNC tensors: one transpose in, one out; bias,
 * LeakyReLU and the skip sums work on channels-last tensors directly.
 */
function buildStudentWinograd(
  g: Graph,
  input: Value,
  weights: StudentWeights,
  o: StudentBuildOptions,
  size: { height: number; width: number },
): Value {
  const slope = o.params.leakySlope;
  const conv3 = (x: Value, c: ConvWeights, key: string) => {
    const weight = o.weightSource ? o.weightSource(`${key}.weight`, c.weight) : c.weight;
    const bias = (o.weightSource ?? asInitializers(g))(`${key}.bias`, c.bias);
    return winogradConvHWNC(g, x, weight, bias, {
      ...size,
      padding: 'zero',
      tile: o.winogradTile ?? fastConvDefaults().studentTile,
      ...(o.winogradGemm ? { gemm: o.winogradGemm } : {}),
      ...(o.winogradColumns ? { columns: o.winogradColumns } : {}),
      name: key.replace(/\./g, '_'),
    });
  };
  const inChannels = weights.conv1.weight.dims[1]!;
  let h = op.leakyRelu(g, conv3(toHWNC(g, input, { channels: inChannels, ...size }), weights.conv1, 'conv1'), slope);
  weights.res.forEach((r, i) => {
    const a = op.leakyRelu(g, conv3(h, foldBatchNorm(r.l1, r.bn1, o.params.bnEps), `res.${i}.l1_bn1`), slope);
    const b = op.leakyRelu(g, conv3(a, foldBatchNorm(r.l2, r.bn2, o.params.bnEps), `res.${i}.l2_bn2`), slope);
    h = op.add(g, h, b, `residual_${i}`);
  });
  return fromHWNC(g, conv3(h, weights.conv2, 'conv2'), { channels: weights.conv2.weight.dims[0]!, ...size });
}
