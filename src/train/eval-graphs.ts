/**
 * Inference-form graphs used during training: the teacher's z and per-sample NLL (validation, and the
 * student's targets), and the student's per-sample distillation loss (validation). Dynamic batch.
 */
import { Graph } from '../onnx/graph.js';
import * as op from '../onnx/ops.js';
import { encodeModel } from '../onnx/serialize.js';
import { f32 } from '../onnx/tensor.js';
import type { ModelParams } from '../config/model-schema.js';
import { positionalEncoding } from '../model/positional-encoding.js';
import { buildTeacherForward } from '../model/teacher-flow.js';
import { buildStudentInference } from '../model/student.js';
import type { StudentWeights, TeacherWeights } from '../model/weights.js';

interface Shape {
  channels: number;
  height: number;
  width: number;
  masked: boolean;
}

function inputs(g: Graph, params: ModelParams, s: Shape) {
  const x = g.input('x', 'float32', ['N', s.channels, s.height, s.width]);
  const mask = s.masked ? g.input('mask', 'float32', ['N', 1, s.height, s.width]) : undefined;
  const pe = positionalEncoding(params.posChannels, s.height, s.width);
  const batch = op.slice(g, op.shape(g, x), [0], [1], [0]);
  const pos = op.expand(g, g.initializer('positional_encoding', f32([1, ...pe.dims], pe.data)), op.concat(g, [batch, op.ints(g, [1, 1, 1])], 0));
  return { x, mask, pos };
}

/** x (+ mask) → z [N, C, h, w], nll [N] (mean over pixels of the masked per-pixel NLL). */
export function buildTeacherEval(params: ModelParams, teacher: TeacherWeights, s: Shape): Uint8Array {
  const g = new Graph('ast_teacher_eval');
  const { x, mask, pos } = inputs(g, params, s);
  const { z, logDet } = buildTeacherForward(g, x, pos, teacher, { clamp: params.teacher.clamp, withLogDet: true });
  const sq = op.reduce(g, 'ReduceSum', op.mul(g, z, z), [1], false);
  let nll = op.sub(g, op.mul(g, sq, op.scalar(g, 0.5)), logDet!);
  if (mask) nll = op.mul(g, nll, op.squeeze(g, mask, [1]));
  g.output(z, 'z');
  g.output(op.reduce(g, 'ReduceMean', nll, [1, 2], false), 'nll');
  return encodeModel(g);
}

/** x, target (+ mask) → loss [N]: mean over C, h, w of mask·(target − student(x))². */
export function buildStudentEval(params: ModelParams, student: StudentWeights, s: Shape): Uint8Array {
  const g = new Graph('ast_student_eval');
  const { x, mask, pos } = inputs(g, params, s);
  const target = g.input('target', 'float32', ['N', s.channels, s.height, s.width]);
  const out = buildStudentInference(g, op.concat(g, [pos, x], 1), student, { params: params.student });
  const d = op.sub(g, target, out);
  let sq = op.mul(g, d, d);
  if (mask) sq = op.mul(g, sq, mask);
  g.output(op.reduce(g, 'ReduceMean', sq, [1, 2, 3], false), 'loss');
  return encodeModel(g);
}
