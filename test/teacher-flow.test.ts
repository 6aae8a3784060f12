import { describe, expect, it } from 'vitest';
import { Graph } from '../src/onnx/graph.js';
import * as op from '../src/onnx/ops.js';
import { f32 } from '../src/onnx/tensor.js';
import { buildTeacherForward, buildTeacherInverse } from '../src/model/teacher-flow.js';
import { initTeacher } from '../src/model/init.js';
import { positionalEncoding } from '../src/model/positional-encoding.js';
import { runGraph, seededNormal } from './helpers/run-graph.js';

const C = 6;
const H = 3;
const W = 3;
const P = 4;
const teacher = initTeacher({ channels: C, condChannels: P, hidden: 8, kernelSizes: [3, 3, 3, 5], seed: 7, gamma: 0.6 });
const pos = positionalEncoding(P, H, W);
const normal = seededNormal(11);
const x = f32([1, C, H, W], Array.from({ length: C * H * W }, normal));

function forwardGraph() {
  const g = new Graph('teacher');
  const xin = g.input('x', 'float32', [1, C, H, W]);
  const p = g.initializer('pos', f32([1, P, H, W], pos.data));
  const { z, logDet } = buildTeacherForward(g, xin, p, teacher, { clamp: 1.9, withLogDet: true });
  g.output(z, 'z');
  g.output(logDet!, 'logdet');
  return g;
}

/** log|det| of a square matrix by LU with partial pivoting (float64). */
function logAbsDet(m: Float64Array, n: number): number {
  const a = Float64Array.from(m);
  let sum = 0;
  for (let k = 0; k < n; k++) {
    let p = k;
    for (let i = k + 1; i < n; i++) if (Math.abs(a[i * n + k]!) > Math.abs(a[p * n + k]!)) p = i;
    if (p !== k) for (let j = 0; j < n; j++) [a[k * n + j], a[p * n + j]] = [a[p * n + j]!, a[k * n + j]!];
    const pivot = a[k * n + k]!;
    sum += Math.log(Math.abs(pivot));
    for (let i = k + 1; i < n; i++) {
      const f = a[i * n + k]! / pivot;
      for (let j = k; j < n; j++) a[i * n + j] = a[i * n + j]! - f * a[k * n + j]!;
    }
  }
  return sum;
}

describe('teacher normalizing flow', () => {
  it('inverse pass reconstructs the input', async () => {
    const g = new Graph('roundtrip');
    const xin = g.input('x', 'float32', [1, C, H, W]);
    const p = g.initializer('pos', f32([1, P, H, W], pos.data));
    const { z } = buildTeacherForward(g, xin, p, teacher, { clamp: 1.9 });
    g.output(z, 'z');
    g.output(buildTeacherInverse(g, z, p, teacher, { clamp: 1.9 }), 'x_rec');
    const out = await runGraph(g, { x });
    let maxDiff = 0;
    let zMove = 0;
    for (let i = 0; i < x.data.length; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(out.x_rec!.data[i]! - x.data[i]!));
      zMove = Math.max(zMove, Math.abs(out.z!.data[i]! - x.data[i]!));
    }
    expect(zMove).toBeGreaterThan(0.1); // the flow is not the identity (γ ≠ 0)
    expect(maxDiff).toBeLessThan(1e-5);
  });

  it('per-pixel log-det sums to log|det| of the numerical Jacobian', async () => {
    const n = C * H * W;
    const eps = 1e-2;
    // One batch: row 0 is x, then x ± eps·e_i for every input coordinate (central differences).
    const g = new Graph('jac');
    const xin = g.input('x', 'float32', [2 * n + 1, C, H, W]);
    const pe = g.initializer('pos', f32([1, P, H, W], pos.data));
    const posB = op.expand(g, pe, op.ints(g, [2 * n + 1, 1, 1, 1]));
    const { z, logDet } = buildTeacherForward(g, xin, posB, teacher, { clamp: 1.9, withLogDet: true });
    g.output(z, 'z');
    g.output(logDet!, 'logdet');
    const batch = new Float32Array((2 * n + 1) * n);
    for (let b = 0; b < 2 * n + 1; b++) batch.set(x.data, b * n);
    for (let i = 0; i < n; i++) {
      batch[(1 + 2 * i) * n + i] += eps;
      batch[(2 + 2 * i) * n + i] -= eps;
    }
    const out = await runGraph(g, { x: f32([2 * n + 1, C, H, W], batch) });
    const zs = out.z!.data;
    const jac = new Float64Array(n * n); // jac[row = output j][col = input i]
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        jac[j * n + i] = (zs[(1 + 2 * i) * n + j]! - zs[(2 + 2 * i) * n + j]!) / (2 * eps);
      }
    }
    const numeric = logAbsDet(jac, n);
    const perPixel = out.logdet!.data.slice(0, H * W);
    const analytic = perPixel.reduce((s, v) => s + v, 0);
    expect(out.logdet!.dims).toEqual([2 * n + 1, H, W]);
    expect(Math.abs(analytic)).toBeGreaterThan(0.5);
    expect(Math.abs(numeric - analytic)).toBeLessThan(2e-3 * Math.max(1, Math.abs(analytic)));
  });

  it('is the identity with γ = 0 (the paper initialisation)', async () => {
    const id = initTeacher({ channels: C, condChannels: P, hidden: 8, kernelSizes: [3, 3, 3, 5], seed: 3 });
    const g = new Graph('identity');
    const xin = g.input('x', 'float32', [1, C, H, W]);
    const p = g.initializer('pos', f32([1, P, H, W], pos.data));
    const { z, logDet } = buildTeacherForward(g, xin, p, id, { clamp: 1.9, withLogDet: true });
    // Permutations still reorder channels; undo them to compare with x.
    g.output(buildTeacherInverse(g, z, p, id, { clamp: 1.9 }), 'x_rec');
    g.output(logDet!, 'logdet');
    const out = await runGraph(g, { x });
    expect(Math.max(...out.logdet!.data.map(Math.abs))).toBe(0);
    expect(Math.max(...out.x_rec!.data.map((v, i) => Math.abs(v - x.data[i]!)))).toBeLessThan(1e-6);
  });
});
