/**
 * Parity with the authors' formulation: a reference checkpoint (made by tools/reference/make_fixture.py
 * with our own PyTorch implementation of the published model) imported into a bundle must reproduce the
 * reference outputs on the same features to 1e-4 relative.
 */
import { mkdtemp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { describe, expect, it, beforeAll } from 'vitest';
import { decodeNpy } from '../src/formats/npy.js';
import { decodeSafetensors } from '../src/formats/safetensors.js';
import { importReference } from '../src/bundle/import-reference.js';
import { readBundle } from '../src/bundle/bundle-store.js';
import { Detector } from '../src/runtime/detector.js';
import { Graph } from '../src/onnx/graph.js';
import * as op from '../src/onnx/ops.js';
import { f32, type HostTensor } from '../src/onnx/tensor.js';
import { positionalEncoding } from '../src/model/positional-encoding.js';
import { buildTeacherForward } from '../src/model/teacher-flow.js';
import { buildStudentInference } from '../src/model/student.js';
import { studentFromStateDict, teacherFromStateDict } from '../src/model/weights.js';
import { buildUpsampledMap } from '../src/model/anomaly-map.js';
import { maxRelativeError, runGraph } from './helpers/run-graph.js';

const FIX = 'test/fixtures/reference';
const npy = async (name: string) => decodeNpy(await readFile(join(FIX, name)), name) as HostTensor<'float32'>;
const TOL = 1e-4;

describe('parity with the reference implementation (rgb)', () => {
  let features: HostTensor<'float32'>;
  beforeAll(async () => {
    features = await npy('features.npy');
  });

  it('positional encoding equals the reference', async () => {
    const ref = await npy('pos.npy');
    const ours = positionalEncoding(32, 8, 12);
    expect(ours.dims).toEqual(ref.dims);
    expect(maxRelativeError(ours.data, ref.data)).toBeLessThan(1e-6);
  });

  it('teacher z and log-det, and student output, equal the reference', async () => {
    const teacher = teacherFromStateDict(decodeSafetensors(await readFile(join(FIX, 'teacher.safetensors'))));
    const student = studentFromStateDict(decodeSafetensors(await readFile(join(FIX, 'student.safetensors'))));
    const [n, c, h, w] = features.dims as [number, number, number, number];
    const g = new Graph('parts');
    const x = g.input('x', 'float32', [n, c, h, w]);
    const pe = positionalEncoding(32, h, w);
    const pos = op.expand(g, g.initializer('pos', f32([1, 32, h, w], pe.data)), op.ints(g, [n, 1, 1, 1]));
    const { z, logDet } = buildTeacherForward(g, x, pos, teacher, { clamp: 1.9, withLogDet: true, foldGamma: false });
    g.output(z, 'z');
    g.output(logDet!, 'logdet');
    g.output(buildStudentInference(g, op.concat(g, [pos, x], 1), student, { params: { leakySlope: 0.01, bnEps: 1e-5 } }), 'student');
    const out = await runGraph(g, { x: features });
    expect(maxRelativeError(out.z!.data, (await npy('z.npy')).data)).toBeLessThan(TOL);
    expect(maxRelativeError(out.logdet!.data, (await npy('logdet.npy')).data)).toBeLessThan(TOL);
    expect(maxRelativeError(out.student!.data, (await npy('student.npy')).data)).toBeLessThan(TOL);
  });

  it('an imported reference checkpoint scores like the reference (map, max, mean)', async () => {
    const out = await mkdtemp(join(tmpdir(), 'ast-import-'));
    await importReference({
      teacherFile: join(FIX, 'teacher.safetensors'),
      studentFile: join(FIX, 'student.safetensors'),
      preset: 'paper',
      mode: 'rgb',
      out,
      featureSize: { height: 8, width: 12 },
      toolVersion: 'test',
    });
    const bundle = await readBundle(out);
    expect(bundle.manifest.model.teacher).toMatchObject({ blocks: 4, hidden: 16, kernelSizes: [3, 3, 3, 5] });
    expect(bundle.manifest.model.student).toMatchObject({ width: 24, residualBlocks: 4 });
    expect(bundle.manifest.preset).toBe('custom');
    expect(bundle.manifest.graphs.detector).toBeUndefined(); // no backbone given: feature-level bundle
    const detector = await Detector.load(bundle, 'head');
    const result = await detector.scoreFeatures(features);
    await detector.release();
    const refMap = await npy('map.npy');
    expect(maxRelativeError(result.map, refMap.data)).toBeLessThan(TOL);
    const scores = JSON.parse(await readFile(join(FIX, 'scores.json'), 'utf8')).samples as { max: number; mean: number }[];
    scores.forEach((s, i) => {
      expect(Math.abs(result.scoreMax[i]! - s.max) / s.max).toBeLessThan(TOL);
      expect(Math.abs(result.scoreMean[i]! - s.mean) / s.mean).toBeLessThan(TOL);
    });
  });

  it('bicubic upsampling of the map equals PyTorch bicubic (×8, align_corners=False)', async () => {
    const map = await npy('map.npy');
    const [n, h, w] = map.dims as [number, number, number];
    const g = new Graph('up');
    const m = g.input('m', 'float32', [n, 1, h, w]);
    g.output(buildUpsampledMap(g, m, h * 8, w * 8, 0), 'up');
    const out = await runGraph(g, { m: f32([n, 1, h, w], map.data) });
    expect(maxRelativeError(out.up!.data, (await npy('map_upsampled.npy')).data)).toBeLessThan(TOL);
  });
});

describe('parity with the reference implementation (rgbd)', () => {
  const RGBD = join(FIX, 'rgbd');
  const rnpy = async (name: string) => decodeNpy(await readFile(join(RGBD, name)), name) as HostTensor<'float32'>;

  it('an imported RGB-D checkpoint, fed prepared depth and the feature-resolution mask, scores like the reference', async () => {
    const out = await mkdtemp(join(tmpdir(), 'ast-import-rgbd-'));
    await importReference({
      teacherFile: join(RGBD, 'teacher.safetensors'),
      studentFile: join(RGBD, 'student.safetensors'),
      preset: 'paper',
      mode: 'rgbd',
      out,
      featureSize: { height: 8, width: 8 },
      toolVersion: 'test',
    });
    const bundle = await readBundle(out);
    expect(bundle.manifest.model).toMatchObject({ mode: 'rgbd', featureChannels: 8, depthChannels: 64 });
    const features = await rnpy('features.npy');
    const depth = await rnpy('depth_resized.npy');
    const mask = await rnpy('fg_down.npy');
    const n = features.dims[0]!;
    const detector = await Detector.load(bundle, 'head');
    const result = await detector.scoreFeatures(features, {
      depth: f32([n, 1, depth.dims[1]!, depth.dims[2]!], depth.data),
      mask: f32([n, 1, mask.dims[1]!, mask.dims[2]!], mask.data),
    });
    await detector.release();
    expect(maxRelativeError(result.map, (await rnpy('map.npy')).data)).toBeLessThan(TOL);
    const scores = JSON.parse(await readFile(join(RGBD, 'scores.json'), 'utf8')).samples as { max: number; mean: number }[];
    scores.forEach((s, i) => {
      expect(Math.abs(result.scoreMax[i]! - s.max) / s.max).toBeLessThan(TOL);
      expect(Math.abs(result.scoreMean[i]! - s.mean) / s.mean).toBeLessThan(TOL);
    });
  });
});
