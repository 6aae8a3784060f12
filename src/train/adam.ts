/**
 * Adam as graph ops, appended to a training graph after the gradients, so one ONNX Runtime run does the
 * whole step. Matches torch.optim.Adam (the authors' optimizer): weight decay as an L2 term added to the
 * gradient; `decoupled: true` gives AdamW instead.
 */
import type { Graph, Value } from '../onnx/graph.js';
import * as op from '../onnx/ops.js';

export interface AdamOptions {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  decoupled: boolean;
}

export const PAPER_ADAM: AdamOptions = { lr: 2e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 1e-5, decoupled: false };

/** Per-step scalars computed on the host: bias corrections depend on the step count. */
export interface AdamStepScalars {
  /** lr / (1 − β1ᵗ) */
  stepSize: number;
  /** 1 / √(1 − β2ᵗ) */
  invSqrtBias2: number;
  /** lr (for decoupled weight decay) */
  lr: number;
}

export function adamScalars(o: AdamOptions, step: number): AdamStepScalars {
  return {
    stepSize: o.lr / (1 - o.beta1 ** step),
    invSqrtBias2: 1 / Math.sqrt(1 - o.beta2 ** step),
    lr: o.lr,
  };
}

export interface AdamInputs {
  stepSize: Value;
  invSqrtBias2: Value;
  lr: Value;
}

/** p' = p − stepSize · m' / (√v' · invSqrtBias2 + ε), with m' and v' the updated moments. */
export function addAdamUpdate(
  g: Graph,
  param: Value,
  grad: Value,
  m: Value,
  v: Value,
  o: AdamOptions,
  s: AdamInputs,
): { param: Value; m: Value; v: Value } {
  let gr = grad;
  if (o.weightDecay > 0 && !o.decoupled) gr = op.add(g, gr, op.mul(g, param, op.scalar(g, o.weightDecay, 'wd')));
  const m1 = op.add(g, op.mul(g, m, op.scalar(g, o.beta1, 'beta1')), op.mul(g, gr, op.scalar(g, 1 - o.beta1, 'one_minus_beta1')));
  const v1 = op.add(g, op.mul(g, v, op.scalar(g, o.beta2, 'beta2')), op.mul(g, op.mul(g, gr, gr), op.scalar(g, 1 - o.beta2, 'one_minus_beta2')));
  const denom = op.add(g, op.mul(g, g.op('Sqrt', [v1]), s.invSqrtBias2), op.scalar(g, o.eps, 'eps'));
  let p = op.sub(g, param, op.mul(g, op.div(g, m1, denom), s.stepSize));
  if (o.weightDecay > 0 && o.decoupled) p = op.sub(g, p, op.mul(g, param, op.mul(g, s.lr, op.scalar(g, o.weightDecay, 'wd'))));
  return { param: p, m: m1, v: v1 };
}
