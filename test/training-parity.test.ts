/**
 * Training parity with PyTorch autograd (an autodiff independent of ours): gradients of the teacher NLL
 * and of the student's distillation loss (BatchNorm in training mode), and the weights after two Adam
 * steps, from tools/reference/make_training_fixture.py.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Graph } from '../src/onnx/graph.js';
import * as op from '../src/onnx/ops.js';
import { gradients } from '../src/onnx/autodiff.js';
import { decodeNpy } from '../src/formats/npy.js';
import { decodeSafetensors } from '../src/formats/safetensors.js';
import { f32, type HostTensor } from '../src/onnx/tensor.js';
import { modelParamsFor } from '../src/config/model-schema.js';
import { positionalEncoding } from '../src/model/positional-encoding.js';
import { buildTeacherForward } from '../src/model/teacher-flow.js';
import { studentFromStateDict, studentToStateDict, teacherFromStateDict, teacherToStateDict } from '../src/model/weights.js';
import { buildStudentTrainStep, buildTeacherTrainStep, gradientName, teacherNll } from '../src/train/train-graphs.js';
import { PAPER_ADAM } from '../src/train/adam.js';
import { TrainStepRunner } from '../src/train/step-runner.js';
import { maxRelativeError, runGraph } from './helpers/run-graph.js';

const FIX = 'test/fixtures/reference';
const load = async (f: string) => decodeSafetensors(await readFile(join(FIX, f)), f);
const features = async () => decodeNpy(await readFile(join(FIX, 'features.npy'))) as HostTensor<'float32'>;
const params = () => {
  const p = modelParamsFor('paper', 'rgb', 24);
  return { ...p, teacher: { ...p.teacher, hidden: 16 }, student: { ...p.student, width: 24 } };
};

function compare(actual: Map<string, HostTensor>, expected: Map<string, HostTensor>, tol: number) {
  let worst = 0;
  let worstKey = '';
  for (const [k, e] of expected) {
    const a = actual.get(k);
    expect(a, `missing ${k}`).toBeDefined();
    const err = maxRelativeError(a!.data as Float32Array, e.data as Float32Array, 1e-3);
    if (err > worst) [worst, worstKey] = [err, k];
  }
  expect(worst, `worst: ${worstKey}`).toBeLessThan(tol);
  return worst;
}

describe('training graphs agree with PyTorch autograd', () => {
  it('teacher NLL gradient with respect to every weight', async () => {
    const teacher = teacherFromStateDict(await load('teacher.safetensors'));
    const x = await features();
    const [n, c, h, w] = x.dims as number[];
    const g = new Graph('teacher_grad');
    const xin = g.input('x', 'float32', [n!, c!, h!, w!]);
    const sd = teacherToStateDict(teacher);
    const inputs = new Map([...sd].filter(([, t]) => t.dtype === 'float32').map(([k, t]) => [k, g.input(k.replace(/\./g, '_'), 'float32', t.dims)]));
    const pe = positionalEncoding(32, h!, w!);
    const pos = op.expand(g, g.initializer('pos', f32([1, 32, h!, w!], pe.data)), op.ints(g, [n!, 1, 1, 1]));
    const { z, logDet } = buildTeacherForward(g, xin, pos, teacher, { clamp: 1.9, withLogDet: true, foldGamma: false, weightSource: (k) => inputs.get(k)! });
    const loss = g.output(teacherNll(g, z, logDet!), 'loss');
    const keys = [...inputs.keys()];
    gradients(g, loss, keys.map((k) => inputs.get(k)!)).forEach((d, i) => g.output(d, `d_${keys[i]!.replace(/\./g, '_')}`));
    const feeds: Record<string, HostTensor> = { x };
    for (const k of keys) feeds[k.replace(/\./g, '_')] = sd.get(k)!;
    const out = await runGraph(g, feeds);
    const losses = JSON.parse(await readFile(join(FIX, 'train/losses.json'), 'utf8'));
    expect(Math.abs(out.loss!.data[0]! - losses.teacher_loss) / losses.teacher_loss).toBeLessThan(1e-5);
    const ours = new Map(keys.map((k) => [k, f32(sd.get(k)!.dims, out[`d_${k.replace(/\./g, '_')}`]!.data)]));
    compare(ours, await load('train/teacher_grads.safetensors'), 1e-4);
  });

  it('teacher: two Adam steps give the same weights as torch.optim.Adam', async () => {
    const teacher = teacherFromStateDict(await load('teacher.safetensors'));
    const x = await features();
    const [n, c, h, w] = x.dims as number[];
    const step = buildTeacherTrainStep(params(), teacher, { batch: n!, channels: c!, height: h!, width: w!, masked: false }, PAPER_ADAM);
    const runner = await TrainStepRunner.create(step, teacherToStateDict(teacher), PAPER_ADAM);
    const losses = JSON.parse(await readFile(join(FIX, 'train/losses.json'), 'utf8'));
    const l1 = await runner.run({ x: x.data });
    const l2 = await runner.run({ x: x.data });
    expect(Math.abs(l1 - losses.teacher_step_losses[0]) / losses.teacher_step_losses[0]).toBeLessThan(1e-5);
    expect(Math.abs(l2 - losses.teacher_step_losses[1]) / losses.teacher_step_losses[1]).toBeLessThan(1e-5);
    compare(runner.weights(), await load('train/teacher_after_steps.safetensors'), 1e-4);
    await runner.release();
  });

  it('student: distillation gradients, Adam steps and BatchNorm running statistics', async () => {
    const student = studentFromStateDict(await load('student.safetensors'));
    const x = await features();
    const z = decodeNpy(await readFile(join(FIX, 'z.npy'))) as HostTensor<'float32'>;
    const [n, c, h, w] = x.dims as number[];
    const step = buildStudentTrainStep(params(), student, { batch: n!, channels: c!, height: h!, width: w!, masked: false }, PAPER_ADAM, {
      exposeGradients: true,
    });
    const runner = await TrainStepRunner.create(step, studentToStateDict(student), PAPER_ADAM);
    const losses = JSON.parse(await readFile(join(FIX, 'train/losses.json'), 'utf8'));
    const first = await runner.runWithOutputs({ x: x.data, target: z.data });
    const l2 = await runner.run({ x: x.data, target: z.data });
    expect(Math.abs(first.loss - losses.student_step_losses[0]) / losses.student_step_losses[0]).toBeLessThan(1e-5);
    expect(Math.abs(l2 - losses.student_step_losses[1]) / losses.student_step_losses[1]).toBeLessThan(1e-5);
    const grads = new Map(step.params.filter((p) => p.trainable).map((p) => [p.key, f32(p.shape, first.extra[gradientName(p.key)]!)]));
    compare(grads, await load('train/student_grads.safetensors'), 1e-4);
    // Adam's first steps move each weight by ≈ lr·sign(gradient). Where a gradient is ~0 — the conv biases
    // right before a BatchNorm, which cancels them exactly — float32 rounding decides the sign in either
    // implementation. So: weights with a real gradient must match to a twentieth of a step; the rest may
    // differ by at most the two steps taken, and must be few.
    const expected = await load('train/student_after_steps.safetensors');
    const torchGrads = await load('train/student_grads.safetensors');
    let worstReal = 0;
    let worstAny = 0;
    let noisy = 0;
    let total = 0;
    const globalMax = [...torchGrads.values()].reduce((m, t) => Math.max(m, ...Array.from(t.data as Float32Array, Math.abs)), 0);
    const weights = runner.weights();
    const running = new Map([...weights].filter(([k]) => k.includes('.running_')));
    compare(running, new Map([...expected].filter(([k]) => k.includes('.running_'))), 1e-4);
    for (const [k, wt] of weights) {
      if (running.has(k)) continue;
      const e = expected.get(k)!.data as Float32Array;
      const gr = torchGrads.get(k)!.data as Float32Array;
      // Noise: below 1e-5 of the tensor's largest gradient, or 1e-6 of the largest overall.
      const floor = Math.max(1e-5 * gr.reduce((m, v) => Math.max(m, Math.abs(v)), 0), 1e-6 * globalMax);
      for (let i = 0; i < e.length; i++) {
        const steps = Math.abs(wt.data[i]! - e[i]!) / PAPER_ADAM.lr;
        worstAny = Math.max(worstAny, steps);
        total++;
        if (Math.abs(gr[i]!) < floor) noisy++;
        else worstReal = Math.max(worstReal, steps);
      }
    }
    expect(worstReal).toBeLessThan(0.05);
    expect(worstAny).toBeLessThan(2 * 2 + 1e-3);
    expect(noisy / total).toBeLessThan(0.02);
    await runner.release();
  });
});
