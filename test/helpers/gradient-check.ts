/**
 * Finite-difference gradient check: builds f(inputs) = Σ op(inputs)·R (R fixed random), differentiates it
 * with the graph autodiff, and compares every coordinate of every input's gradient with central differences
 * of the same ONNX forward graph.
 */
import * as ort from 'onnxruntime-node';
import { Graph, type Value } from '../../src/onnx/graph.js';
import * as op from '../../src/onnx/ops.js';
import { gradients } from '../../src/onnx/autodiff.js';
import { encodeModel } from '../../src/onnx/serialize.js';
import { f32, type HostTensor } from '../../src/onnx/tensor.js';
import { seededNormal } from './run-graph.js';

export interface GradientCheckResult {
  /** max |analytic − numeric| / max(1, |numeric|) over all coordinates */
  worst: number;
  coordinates: number;
}

export async function checkGradients(
  build: (g: Graph, inputs: Record<string, Value>) => Value,
  inputs: Record<string, HostTensor<'float32'>>,
  options: { eps?: number; seed?: number } = {},
): Promise<GradientCheckResult> {
  const eps = options.eps ?? 1e-2;
  const makeGraph = () => {
    const g = new Graph('gradcheck');
    const vals: Record<string, Value> = {};
    for (const [k, t] of Object.entries(inputs)) vals[k] = g.input(k, 'float32', t.dims);
    const out = build(g, vals);
    const shape = out.shape as number[];
    const normal = seededNormal(options.seed ?? 5);
    const r = g.initializer('R', f32(shape, Array.from({ length: shape.reduce((a, b) => a * b, 1) }, normal)));
    const loss = op.reduce(g, 'ReduceSum', op.mul(g, out, r), shape.map((_, i) => i), false);
    return { g, vals, loss };
  };
  const forward = makeGraph();
  forward.g.output(forward.loss, 'loss');
  const withGrad = makeGraph();
  const names = Object.keys(inputs);
  const grads = gradients(withGrad.g, withGrad.loss, names.map((k) => withGrad.vals[k]!));
  grads.forEach((d, i) => withGrad.g.output(d, `d_${names[i]}`));
  const opts = { executionProviders: ['cpu'], logSeverityLevel: 3 as const };
  const fSession = await ort.InferenceSession.create(encodeModel(forward.g), opts);
  const gSession = await ort.InferenceSession.create(encodeModel(withGrad.g), opts);
  const feeds = (override?: { name: string; index: number; delta: number }) =>
    Object.fromEntries(
      Object.entries(inputs).map(([k, t]) => {
        const data = Float32Array.from(t.data);
        if (override && override.name === k) data[override.index] = data[override.index]! + override.delta;
        return [k, new ort.Tensor('float32', data, [...t.dims])];
      }),
    );
  const analytic = await gSession.run(feeds());
  let worst = 0;
  let coordinates = 0;
  for (const name of names) {
    const a = analytic[`d_${name}`]!.data as Float32Array;
    for (let i = 0; i < inputs[name]!.data.length; i++) {
      const up = ((await fSession.run(feeds({ name, index: i, delta: eps }))).loss!.data as Float32Array)[0]!;
      const down = ((await fSession.run(feeds({ name, index: i, delta: -eps }))).loss!.data as Float32Array)[0]!;
      const numeric = (up - down) / (2 * eps);
      worst = Math.max(worst, Math.abs(a[i]! - numeric) / Math.max(1, Math.abs(numeric)));
      coordinates++;
    }
  }
  await fSession.release();
  await gSession.release();
  return { worst, coordinates };
}

export function randomTensor(dims: number[], seed: number, scale = 1, offset = 0): HostTensor<'float32'> {
  const normal = seededNormal(seed);
  return f32(dims, Array.from({ length: dims.reduce((a, b) => a * b, 1) }, () => offset + scale * normal()));
}
