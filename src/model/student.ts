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

export interface StudentBuildOptions {
  params: Pick<StudentParams, 'leakySlope' | 'bnEps'>;
  weightSource?: WeightSource;
}

/** `input` is the student's concatenated input [P, F(, D)] of shape [N, inChannels, h, w]. */
export function buildStudentInference(g: Graph, input: Value, weights: StudentWeights, o: StudentBuildOptions): Value {
  const src = o.weightSource ?? asInitializers(g);
  const slope = o.params.leakySlope;
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
