/**
 * BatchNorm in training form, built from primitive ops so the graph autodiff differentiates it (ONNX
 * Runtime's BatchNormalization in training mode does not return the batch statistics a backward pass needs).
 * Also returns the updated running statistics, as PyTorch keeps them: momentum 0.1, unbiased variance.
 */
import type { Graph, Value } from '../onnx/graph.js';
import * as op from '../onnx/ops.js';

export interface BatchNormTrainOutputs {
  y: Value;
  runningMean: Value;
  runningVar: Value;
}

export function batchNormTrain(
  g: Graph,
  x: Value,
  weight: Value,
  bias: Value,
  runningMean: Value,
  runningVar: Value,
  eps: number,
  momentum = 0.1,
): BatchNormTrainOutputs {
  const shape = x.shape as number[];
  const count = shape[0]! * shape[2]! * shape[3]!;
  const c = shape[1]!;
  const mean = op.reduce(g, 'ReduceMean', x, [0, 2, 3], true);
  const centred = op.sub(g, x, mean);
  const variance = op.reduce(g, 'ReduceMean', op.mul(g, centred, centred), [0, 2, 3], true);
  const invStd = op.div(g, op.scalar(g, 1, 'one'), g.op('Sqrt', [op.add(g, variance, op.scalar(g, eps, 'bn_eps'))]));
  const norm = op.mul(g, centred, invStd);
  const y = op.add(g, op.mul(g, norm, op.reshape(g, weight, [1, c, 1, 1])), op.reshape(g, bias, [1, c, 1, 1]));
  const keep = op.scalar(g, 1 - momentum, 'bn_keep');
  const take = op.scalar(g, momentum, 'bn_momentum');
  const flatMean = op.reshape(g, mean, [c]);
  const unbiased = op.mul(g, op.reshape(g, variance, [c]), op.scalar(g, count / Math.max(1, count - 1), 'bessel'));
  return {
    y,
    runningMean: op.add(g, op.mul(g, runningMean, keep), op.mul(g, flatMean, take)),
    runningVar: op.add(g, op.mul(g, runningVar, keep), op.mul(g, unbiased, take)),
  };
}
