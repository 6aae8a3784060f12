/**
 * One ONNX graph per training step — forward pass, reverse-mode gradients, Adam — for the teacher (maximum
 * likelihood) and the student (distillation of the teacher's z). Weights and Adam moments are graph inputs
 * and their updated values graph outputs, so the host keeps the training state and ONNX Runtime does all
 * the arithmetic on whatever execution provider the device has.
 */
import { Graph, type Value } from '../onnx/graph.js';
import * as op from '../onnx/ops.js';
import { gradients } from '../onnx/autodiff.js';
import { encodeModel } from '../onnx/serialize.js';
import { f32, type HostTensor } from '../onnx/tensor.js';
import type { ModelParams } from '../config/model-schema.js';
import { positionalEncoding } from '../model/positional-encoding.js';
import { buildTeacherForward } from '../model/teacher-flow.js';
import { studentToStateDict, teacherToStateDict, type ConvWeights, type StudentWeights, type TeacherWeights } from '../model/weights.js';
import { addAdamUpdate, type AdamOptions } from './adam.js';
import { batchNormTrain } from './batch-norm.js';

export interface ParamSpec {
  /** state_dict key in the reference layout */
  key: string;
  shape: number[];
  /** false for BatchNorm running statistics: updated by the step, but not by gradients */
  trainable: boolean;
}

export interface TrainStepGraph {
  model: Uint8Array;
  params: ParamSpec[];
  batch: number;
  /** static shape of the x (and target) input: [batch, channels, h, w] */
  xShape: number[];
  /** graph input names */
  inputs: { x: string; target?: string; mask?: string };
  /** the names each state tensor has as a graph input and as the updated graph output */
  names: (key: string) => { param: string; m: string; v: string; paramOut: string; mOut: string; vOut: string };
  loss: string;
}

const safe = (key: string) => key.replace(/[^A-Za-z0-9_]/g, '_');
const names = (key: string) => ({
  param: `p_${safe(key)}`,
  m: `m_${safe(key)}`,
  v: `v_${safe(key)}`,
  paramOut: `p_${safe(key)}_next`,
  mOut: `m_${safe(key)}_next`,
  vOut: `v_${safe(key)}_next`,
});

export interface StepShape {
  batch: number;
  height: number;
  width: number;
  /** teacher input channels: features + unshuffled depth */
  channels: number;
  /** multiply losses by a foreground mask input [B, 1, h, w] (depth modes) */
  masked: boolean;
}

function positional(g: Graph, params: ModelParams, s: StepShape): Value {
  const pe = positionalEncoding(params.posChannels, s.height, s.width);
  return op.expand(g, g.initializer('positional_encoding', f32([1, ...pe.dims], pe.data)), op.ints(g, [s.batch, 1, 1, 1], 'batch_shape'));
}

interface StateInputs {
  params: Map<string, Value>;
  specs: ParamSpec[];
}

function stateInputs(g: Graph, sd: Map<string, HostTensor>, isTrainable: (key: string) => boolean): StateInputs {
  const params = new Map<string, Value>();
  const specs: ParamSpec[] = [];
  for (const [key, t] of sd) {
    if (t.dtype !== 'float32') continue; // permutations and counters are constants, not state
    const shape = [...t.dims];
    params.set(key, g.input(names(key).param, 'float32', shape));
    specs.push({ key, shape, trainable: isTrainable(key) });
  }
  return { params, specs };
}

/** Extra outputs for checking a step against another implementation. */
export interface StepDebugOptions {
  /** also output each trainable tensor's gradient as `grad_<key>` */
  exposeGradients?: boolean;
}

export const gradientName = (key: string) => `grad_${safe(key)}`;

function addOptimizer(g: Graph, loss: Value, state: StateInputs, adam: AdamOptions, debug: StepDebugOptions = {}): void {
  const trainable = state.specs.filter((s) => s.trainable);
  const grads = gradients(g, loss, trainable.map((s) => state.params.get(s.key)!));
  if (debug.exposeGradients) trainable.forEach((s, i) => g.output(grads[i]!, gradientName(s.key)));
  const scalars = {
    stepSize: g.input('adam_step_size', 'float32', []),
    invSqrtBias2: g.input('adam_inv_sqrt_bias2', 'float32', []),
    lr: g.input('adam_lr', 'float32', []),
  };
  trainable.forEach((s, i) => {
    const n = names(s.key);
    const m = g.input(n.m, 'float32', s.shape);
    const v = g.input(n.v, 'float32', s.shape);
    const next = addAdamUpdate(g, state.params.get(s.key)!, grads[i]!, m, v, adam, scalars);
    g.output(next.param, n.paramOut);
    g.output(next.m, n.mOut);
    g.output(next.v, n.vOut);
  });
}

/** Mean over pixels of the per-pixel NLL 0.5·Σc z² − log|det J|, weighted by the mask when given. */
export function teacherNll(g: Graph, z: Value, logDet: Value, mask?: Value): Value {
  const sq = op.reduce(g, 'ReduceSum', op.mul(g, z, z), [1], false);
  let nll = op.sub(g, op.mul(g, sq, op.scalar(g, 0.5, 'half')), logDet);
  if (mask) nll = op.mul(g, nll, op.squeeze(g, mask, [1]));
  return op.reduce(g, 'ReduceMean', nll, [0, 1, 2], false);
}

export function buildTeacherTrainStep(
  params: ModelParams,
  teacher: TeacherWeights,
  s: StepShape,
  adam: AdamOptions,
  debug: StepDebugOptions = {},
): TrainStepGraph {
  const g = new Graph('ast_teacher_train_step');
  const x = g.input('x', 'float32', [s.batch, s.channels, s.height, s.width]);
  const mask = s.masked ? g.input('mask', 'float32', [s.batch, 1, s.height, s.width]) : undefined;
  const state = stateInputs(g, teacherToStateDict(teacher), () => true);
  const pos = positional(g, params, s);
  const { z, logDet } = buildTeacherForward(g, x, pos, teacher, {
    clamp: params.teacher.clamp,
    withLogDet: true,
    foldGamma: false,
    weightSource: (key) => {
      const v = state.params.get(key);
      if (!v) throw new Error(`teacher weight ${key} is not a training input`);
      return v;
    },
  });
  addOptimizer(g, g.output(teacherNll(g, z, logDet!, mask), 'loss'), state, adam, debug);
  return {
    model: encodeModel(g, { docString: 'AST teacher training step (NLL, autodiff, Adam)' }),
    params: state.specs,
    batch: s.batch,
    xShape: [s.batch, s.channels, s.height, s.width],
    inputs: { x: 'x', ...(mask ? { mask: 'mask' } : {}) },
    names,
    loss: 'loss',
  };
}

/** The student in training form: batch statistics in every BatchNorm, running statistics updated. */
function studentTrainingForward(
  g: Graph,
  input: Value,
  student: StudentWeights,
  params: ModelParams,
  state: StateInputs,
): { out: Value; running: { key: string; value: Value }[] } {
  const p = (key: string) => state.params.get(key)!;
  const slope = params.student.leakySlope;
  const conv3 = (x: Value, key: string, c: ConvWeights) => {
    const pad = (c.weight.dims[2]! - 1) / 2;
    return op.conv(g, x, p(`${key}.weight`), p(`${key}.bias`), { pads: [pad, pad, pad, pad] });
  };
  const running: { key: string; value: Value }[] = [];
  const bn = (x: Value, key: string) => {
    const r = batchNormTrain(g, x, p(`${key}.weight`), p(`${key}.bias`), p(`${key}.running_mean`), p(`${key}.running_var`), params.student.bnEps);
    running.push({ key: `${key}.running_mean`, value: r.runningMean }, { key: `${key}.running_var`, value: r.runningVar });
    return r.y;
  };
  let h = op.leakyRelu(g, conv3(input, 'conv1', student.conv1), slope);
  student.res.forEach((r, i) => {
    const a = op.leakyRelu(g, bn(conv3(h, `res.${i}.l1`, r.l1), `res.${i}.bn1`), slope);
    const b = op.leakyRelu(g, bn(conv3(a, `res.${i}.l2`, r.l2), `res.${i}.bn2`), slope);
    h = op.add(g, h, b, `residual_${i}`);
  });
  return { out: conv3(h, 'conv2', student.conv2), running };
}

/** Mean over all elements of mask·(z_teacher − z_student)² (the reference's distillation loss). */
export function studentLoss(g: Graph, target: Value, prediction: Value, mask?: Value): Value {
  const d = op.sub(g, target, prediction);
  let sq = op.mul(g, d, d);
  if (mask) sq = op.mul(g, sq, mask);
  return op.reduce(g, 'ReduceMean', sq, [0, 1, 2, 3], false);
}

export function buildStudentTrainStep(
  params: ModelParams,
  student: StudentWeights,
  s: StepShape,
  adam: AdamOptions,
  debug: StepDebugOptions = {},
): TrainStepGraph {
  const g = new Graph('ast_student_train_step');
  const x = g.input('x', 'float32', [s.batch, s.channels, s.height, s.width]);
  const target = g.input('target', 'float32', [s.batch, s.channels, s.height, s.width]);
  const mask = s.masked ? g.input('mask', 'float32', [s.batch, 1, s.height, s.width]) : undefined;
  const state = stateInputs(g, studentToStateDict(student), (key) => !key.includes('.running_'));
  const pos = positional(g, params, s);
  const { out, running } = studentTrainingForward(g, op.concat(g, [pos, x], 1, 'student_input'), student, params, state);
  addOptimizer(g, g.output(studentLoss(g, target, out, mask), 'loss'), state, adam, debug);
  for (const r of running) g.output(r.value, names(r.key).paramOut);
  return {
    model: encodeModel(g, { docString: 'AST student training step (distillation, autodiff, Adam)' }),
    params: state.specs,
    batch: s.batch,
    xShape: [s.batch, s.channels, s.height, s.width],
    inputs: { x: 'x', target: 'target', ...(mask ? { mask: 'mask' } : {}) },
    names,
    loss: 'loss',
  };
}
