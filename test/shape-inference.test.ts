/** Static shapes the builder infers must equal what ONNX Runtime computes. */
import { describe, expect, it } from 'vitest';
import { Graph, type Value } from '../src/onnx/graph.js';
import * as op from '../src/onnx/ops.js';
import { f32 } from '../src/onnx/tensor.js';
import { positionalEncoding } from '../src/model/positional-encoding.js';
import { buildTeacherForward } from '../src/model/teacher-flow.js';
import { buildStudentInference } from '../src/model/student.js';
import { initStudent, initTeacher } from '../src/model/init.js';
import { runGraph } from './helpers/run-graph.js';

describe('shape inference', () => {
  it('agrees with ONNX Runtime on every op of the teacher, the student and common tensor ops', async () => {
    const g = new Graph('shapes');
    const x = g.input('x', 'float32', [2, 6, 5, 7]);
    const pe = positionalEncoding(4, 5, 7);
    const pos = op.expand(g, g.initializer('pos', f32([1, 4, 5, 7], pe.data)), op.ints(g, [2, 1, 1, 1]));
    const teacher = initTeacher({ channels: 6, condChannels: 4, hidden: 3, kernelSizes: [3, 5], seed: 1, gamma: 0.3 });
    const student = initStudent({ inChannels: 10, outChannels: 6, width: 5, residualBlocks: 1, seed: 2 });
    const { z, logDet } = buildTeacherForward(g, x, pos, teacher, { clamp: 1.9, withLogDet: true });
    const st = buildStudentInference(g, op.concat(g, [pos, x], 1), student, { params: { leakySlope: 0.01, bnEps: 1e-5 } });
    const strided = g.op('Conv', [x, g.initializer('w', f32([3, 6, 3, 3]))], { strides: { kind: 'ints', value: [2, 2] }, pads: { kind: 'ints', value: [1, 1, 1, 1] } });
    const same = g.op('Conv', [x, g.initializer('w2', f32([3, 6, 3, 3]))], { strides: { kind: 'ints', value: [2, 2] }, auto_pad: { kind: 'string', value: 'SAME_UPPER' } });
    const checks: Value[] = [
      z, logDet!, st, strided, same,
      op.reshape(g, x, [2, -1]),
      op.transpose(g, x, [0, 2, 3, 1]),
      op.slice(g, x, [1], [-1], [3]),
      op.reduce(g, 'ReduceMean', x, [1, 2], true),
      op.unsqueeze(g, op.reduce(g, 'ReduceSum', x, [1], false), [1]),
      op.matmul(g, op.reshape(g, x, [2, 6, 35]), g.initializer('m', f32([35, 4]))),
      op.spaceToDepth(g, op.slice(g, x, [0, 0], [4, 6], [2, 3]), 2),
    ];
    checks.forEach((v, i) => g.output(v, `out${i}`));
    const out = await runGraph(g, { x: f32([2, 6, 5, 7]) });
    checks.forEach((v, i) => expect(v.shape, `output ${i} (${v.producer?.opType})`).toEqual(out[`out${i}`]!.dims));
  });
});
