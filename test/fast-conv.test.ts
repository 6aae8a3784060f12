/**
 * Winograd convolution (src/model/fast-conv.ts) against ONNX Conv and against the reference fixtures:
 * the transforms are exact in float64, and in float32 they must stay well inside the 1e-4 relative
 * parity budget of the model.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Graph, type Value } from '../src/onnx/graph.js';
import * as op from '../src/onnx/ops.js';
import { f32, type HostTensor } from '../src/onnx/tensor.js';
import { decodeNpy } from '../src/formats/npy.js';
import { decodeSafetensors } from '../src/formats/safetensors.js';
import {
  autoConvAlgorithm,
  buildUpsampledMapMatMul,
  constantConvMap,
  inferSpatialSize,
  winogradConv2d,
  winogradMatrices,
  type SpatialPadding,
} from '../src/model/fast-conv.js';
import { positionalEncoding } from '../src/model/positional-encoding.js';
import { buildTeacherForward, buildTeacherInverse } from '../src/model/teacher-flow.js';
import { buildStudentInference } from '../src/model/student.js';
import { initStudent, initTeacher } from '../src/model/init.js';
import { studentFromStateDict, teacherFromStateDict } from '../src/model/weights.js';
import { buildUpsampledMap, gaussianKernel } from '../src/model/anomaly-map.js';
import { maxRelativeError, runGraph, seededNormal } from './helpers/run-graph.js';

const normal = seededNormal(5);
const randn = (n: number, scale = 1) => Array.from({ length: n }, () => normal() * scale);

describe('Winograd transforms', () => {
  it.each([
    [2, 3],
    [4, 3],
    [6, 3],
    [2, 5],
    [4, 5],
  ])('F(%i, %i) computes the 1-D correlation exactly (float64)', (m, r) => {
    const w = winogradMatrices(m, r);
    const d = randn(w.alpha);
    const k = randn(r);
    const gk = w.G.map((row) => row.reduce((s, v, j) => s + v * k[j]!, 0));
    const bd = w.BT.map((row) => row.reduce((s, v, j) => s + v * d[j]!, 0));
    const y = w.AT.map((row) => row.reduce((s, v, a) => s + v * gk[a]! * bd[a]!, 0));
    const expected = Array.from({ length: m }, (_, i) => k.reduce((s, v, j) => s + v * d[i + j]!, 0));
    y.forEach((v, i) => expect(v).toBeCloseTo(expected[i]!, 10));
  });

  it('keeps the data transform in short dyadic fractions (exact in float32)', () => {
    for (const [m, r] of [
      [4, 3],
      [2, 5],
      [2, 3],
    ] as const) {
      for (const v of winogradMatrices(m, r).BT.flat()) expect(Math.fround(v)).toBe(v);
    }
  });
});

async function compareWithConv(
  shape: { n: number; cin: number; cout: number; h: number; w: number; k: number },
  padding: SpatialPadding,
  tile: number,
  weightsAsInput = false,
): Promise<number> {
  const { n, cin, cout, h, w, k } = shape;
  const p = (k - 1) / 2;
  const weight = f32([cout, cin, k, k], randn(cout * cin * k * k, 1 / Math.sqrt(cin * k * k)));
  const bias = f32([cout], randn(cout, 0.1));
  const g = new Graph('wino');
  const x = g.input('x', 'float32', [n, cin, h, w]);
  const wv = weightsAsInput ? g.input('w', 'float32', [cout, cin, k, k]) : g.initializer('w', weight);
  const bv = g.initializer('b', bias);
  const direct = padding === 'zero' ? op.conv(g, x, wv, bv, { pads: [p, p, p, p] }) : op.conv(g, op.padSpatial(g, x, p, 'edge'), wv, bv);
  g.output(direct, 'direct');
  const fast = winogradConv2d(g, x, weightsAsInput ? wv : weight, bv, { height: h, width: w, padding, tile });
  g.output(fast, 'fast');
  const out = await runGraph(g, { x: f32([n, cin, h, w], randn(n * cin * h * w)), ...(weightsAsInput ? { w: weight } : {}) });
  expect(out.fast!.dims).toEqual(out.direct!.dims);
  return maxRelativeError(out.fast!.data, out.direct!.data);
}

describe('Winograd convolution equals ONNX Conv', () => {
  it.each([
    // zero padding (student), odd and even sizes, all tiles
    [{ n: 2, cin: 16, cout: 24, h: 7, w: 9, k: 3 }, 'zero', 4],
    [{ n: 2, cin: 16, cout: 24, h: 7, w: 9, k: 3 }, 'zero', 2],
    [{ n: 1, cin: 64, cout: 32, h: 24, w: 24, k: 3 }, 'zero', 4],
    [{ n: 3, cin: 8, cout: 8, h: 5, w: 3, k: 3 }, 'zero', 6],
    [{ n: 1, cin: 5, cout: 7, h: 1, w: 2, k: 3 }, 'zero', 4],
    // edge (replicate) padding (teacher), 3×3 and 5×5
    [{ n: 2, cin: 20, cout: 12, h: 9, w: 7, k: 3 }, 'edge', 4],
    [{ n: 1, cin: 20, cout: 12, h: 8, w: 12, k: 3 }, 'edge', 2],
    [{ n: 2, cin: 12, cout: 10, h: 9, w: 7, k: 5 }, 'edge', 2],
    [{ n: 1, cin: 12, cout: 10, h: 11, w: 6, k: 5 }, 'edge', 4],
    [{ n: 1, cin: 6, cout: 4, h: 2, w: 3, k: 5 }, 'edge', 2],
  ] as const)('%o, %s padding, F(%i)', async (shape, padding, tile) => {
    expect(await compareWithConv(shape, padding, tile)).toBeLessThan(2e-5);
  });

  it('takes weights as graph inputs (training graphs) as well as baked-in constants', async () => {
    expect(await compareWithConv({ n: 2, cin: 10, cout: 6, h: 6, w: 5, k: 3 }, 'zero', 4, true)).toBeLessThan(2e-5);
    expect(await compareWithConv({ n: 1, cin: 10, cout: 6, h: 6, w: 5, k: 5 }, 'edge', 2, true)).toBeLessThan(2e-5);
  });

  it('stays within ~1e-5 over many channels (F(4, 3), 512 → 32, 24×24)', async () => {
    expect(await compareWithConv({ n: 1, cin: 512, cout: 32, h: 24, w: 24, k: 3 }, 'zero', 4)).toBeLessThan(1e-5);
  });

  it('constantConvMap is the convolution of a constant map (edge and zero padding)', async () => {
    const map = f32([3, 5, 4], randn(60));
    const weight = f32([2, 7, 3, 3], randn(126));
    const bias = f32([2], [0.5, -0.25]);
    for (const padding of ['edge', 'zero'] as const) {
      const m = constantConvMap(map, weight, bias, 4, padding, 1); // the map fills input channels 4..6
      const g = new Graph('cmap');
      const x = g.initializer('x', f32([1, 3, 5, 4], map.data));
      const wv = g.initializer('w', f32([2, 3, 3, 3], Array.from({ length: 54 }, (_, i) => weight.data[Math.floor(i / 27) * 63 + 36 + (i % 27)]!)));
      const y = padding === 'zero' ? op.conv(g, x, wv, g.initializer('b', bias), { pads: [1, 1, 1, 1] }) : op.conv(g, op.padSpatial(g, x, 1, 'edge'), wv, g.initializer('b', bias));
      g.output(op.transpose(g, y, [2, 3, 0, 1]), 'y');
      const out = await runGraph(g, {});
      expect(maxRelativeError(m.data, out.y!.data)).toBeLessThan(1e-6);
    }
  });
});

const FIX = 'test/fixtures/reference';
const npy = async (name: string) => decodeNpy(await readFile(join(FIX, name)), name) as HostTensor<'float32'>;

describe('Winograd teacher and student equal the reference (1e-4 relative)', () => {
  it.each([
    ['constant positional encoding (head layout)', true],
    ['positional encoding as an input', false],
  ])('%s', async (_label, constantPos) => {
    const features = await npy('features.npy');
    const teacher = teacherFromStateDict(decodeSafetensors(await readFile(join(FIX, 'teacher.safetensors'))));
    const student = studentFromStateDict(decodeSafetensors(await readFile(join(FIX, 'student.safetensors'))));
    const [n, c, h, w] = features.dims as [number, number, number, number];
    const g = new Graph('parts');
    const x = g.input('x', 'float32', [n, c, h, w]);
    const pe = positionalEncoding(32, h, w);
    const pos: Value = constantPos
      ? op.expand(g, g.initializer('pos', f32([1, 32, h, w], pe.data)), op.ints(g, [n, 1, 1, 1]))
      : g.input('pos', 'float32', [n, 32, h, w]);
    const { z, logDet } = buildTeacherForward(g, x, pos, teacher, { clamp: 1.9, withLogDet: true, foldGamma: false, convAlgorithm: 'winograd' });
    g.output(z, 'z');
    g.output(logDet!, 'logdet');
    const st = buildStudentInference(g, op.concat(g, [pos, x], 1), student, {
      params: { leakySlope: 0.01, bnEps: 1e-5 },
      convAlgorithm: 'winograd',
      spatialSize: { height: h, width: w },
    });
    g.output(st, 'student');
    expect(g.nodes.some((node) => node.opType === 'Conv')).toBe(false);
    const posFeed = f32([n, 32, h, w], Array.from({ length: n }, () => Array.from(pe.data)).flat());
    const out = await runGraph(g, { x: features, ...(constantPos ? {} : { pos: posFeed }) });
    expect(maxRelativeError(out.z!.data, (await npy('z.npy')).data)).toBeLessThan(1e-4);
    expect(maxRelativeError(out.logdet!.data, (await npy('logdet.npy')).data)).toBeLessThan(1e-4);
    expect(maxRelativeError(out.student!.data, (await npy('student.npy')).data)).toBeLessThan(1e-4);
  });

  it('the Winograd teacher inverts (inverse pass reconstructs the input)', async () => {
    const C = 32;
    const H = 6;
    const W = 7;
    const teacher = initTeacher({ channels: C, condChannels: 8, hidden: 24, kernelSizes: [3, 5], seed: 4, gamma: 0.5 });
    const g = new Graph('roundtrip');
    const x = g.input('x', 'float32', [2, C, H, W]);
    const pe = positionalEncoding(8, H, W);
    const pos = op.expand(g, g.initializer('pos', f32([1, 8, H, W], pe.data)), op.ints(g, [2, 1, 1, 1]));
    const { z } = buildTeacherForward(g, x, pos, teacher, { clamp: 1.9, convAlgorithm: 'winograd' });
    g.output(z, 'z');
    g.output(buildTeacherInverse(g, z, pos, teacher, { clamp: 1.9, convAlgorithm: 'winograd' }), 'x_rec');
    const xs = f32([2, C, H, W], randn(2 * C * H * W));
    const out = await runGraph(g, { x: xs });
    expect(maxRelativeError(out.z!.data, xs.data)).toBeGreaterThan(0.05);
    expect(maxRelativeError(out.x_rec!.data, xs.data)).toBeLessThan(1e-5);
  });
});

describe('algorithm choice', () => {
  it('auto picks Winograd for wide 3×3/5×5 convs only', () => {
    expect(autoConvAlgorithm({ key: 'a', cin: 336, cout: 1024, kernel: 3 })).toBe('winograd');
    expect(autoConvAlgorithm({ key: 'a', cin: 152, cout: 64, kernel: 5 })).toBe('winograd');
    expect(autoConvAlgorithm({ key: 'a', cin: 56, cout: 24, kernel: 3 })).toBe('direct');
    expect(autoConvAlgorithm({ key: 'a', cin: 10, cout: 8, kernel: 3 })).toBe('direct');
    expect(autoConvAlgorithm({ key: 'a', cin: 256, cout: 256, kernel: 1 })).toBe('direct');
  });

  it('builders use Winograd by default for wide inference nets, and direct Conv for training-style weight inputs', () => {
    const student = initStudent({ inChannels: 64, outChannels: 64, width: 64, residualBlocks: 1, seed: 1 });
    const build = (withSource: boolean) => {
      const g = new Graph('s');
      const x = g.input('x', 'float32', ['N', 64, 6, 6]);
      buildStudentInference(g, x, student, {
        params: { leakySlope: 0.01, bnEps: 1e-5 },
        ...(withSource ? { weightSource: (key: string, t: HostTensor) => g.input(key.replace(/\./g, '_'), 'float32', t.dims) } : {}),
      });
      return g.nodes.map((n) => n.opType);
    };
    expect(build(false)).not.toContain('Conv');
    expect(build(true)).toContain('Conv');
  });

  it('a per-conv rule mixes Winograd and direct convs in one student (same result)', async () => {
    const student = initStudent({ inChannels: 40, outChannels: 8, width: 48, residualBlocks: 1, seed: 3 });
    const g = new Graph('mixed');
    const x = g.input('x', 'float32', [2, 40, 7, 5]);
    const p = { leakySlope: 0.01, bnEps: 1e-5 };
    g.output(buildStudentInference(g, x, student, { params: p, convAlgorithm: 'direct' }), 'direct');
    const mixed = buildStudentInference(g, x, student, {
      params: p,
      convAlgorithm: (site) => (site.key.startsWith('res') ? 'winograd' : 'direct'),
      spatialSize: { height: 7, width: 5 },
    });
    g.output(mixed, 'mixed');
    const out = await runGraph(g, { x: f32([2, 40, 7, 5], randn(2 * 40 * 35)) });
    expect(maxRelativeError(out.mixed!.data, out.direct!.data)).toBeLessThan(2e-5);
  });

  it('infers the map size through concat and expand', () => {
    const g = new Graph('s');
    const x = g.input('x', 'float32', ['N', 3, 'h', 'w']);
    const pos = op.expand(g, g.initializer('p', f32([1, 2, 5, 6])), op.ints(g, [1, 1, 1, 1]));
    expect(inferSpatialSize(g, op.concat(g, [pos, x], 1))).toEqual({ height: 5, width: 6 });
    expect(inferSpatialSize(g, x)).toBeUndefined();
  });
});

describe('map upsampling as two products', () => {
  it('equals PyTorch bicubic ×8 (reference fixture) and the Resize + Gaussian graph', async () => {
    const map = await npy('map.npy');
    const [n, h, w] = map.dims as [number, number, number];
    const g = new Graph('up');
    const m = g.input('m', 'float32', [n, 1, h, w]);
    g.output(buildUpsampledMapMatMul(g, m, { height: h, width: w }, { height: 8 * h, width: 8 * w }), 'plain');
    g.output(buildUpsampledMapMatMul(g, m, { height: h, width: w }, { height: 8 * h, width: 8 * w }, gaussianKernel(4)), 'smooth');
    g.output(buildUpsampledMap(g, m, 8 * h, 8 * w, 4), 'smooth_ref');
    const out = await runGraph(g, { m: f32([n, 1, h, w], map.data) });
    expect(out.plain!.dims).toEqual([n, 1, 8 * h, 8 * w]);
    expect(maxRelativeError(out.plain!.data, (await npy('map_upsampled.npy')).data)).toBeLessThan(1e-5);
    expect(maxRelativeError(out.smooth!.data, out.smooth_ref!.data)).toBeLessThan(1e-5);
  });
});
