/**
 * Training on the device, end to end on real files: a short run lowers both losses, the bundle gives the
 * verdicts computed at training, a run killed with SIGKILL resumes from its checkpoint to the same
 * weights as an uninterrupted one, and fine-tuning starts from a bundle.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import sharp from 'sharp';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { promisify } from 'node:util';
import pino from 'pino';
import { beforeAll, describe, expect, it } from 'vitest';
import { readBundle } from '../src/bundle/bundle-store.js';
import { decodeSafetensors } from '../src/formats/safetensors.js';
import { Detector } from '../src/runtime/detector.js';
import { tensor } from '../src/onnx/tensor.js';
import { decodeRgb, encodeTiff, loadDataset, writeTextureDataset } from '../src/train/datasets/index.js';
import { compareGoldenScores, goldenSamplesFor } from '../src/bundle/golden.js';
import { splitTrainValidation, train, type TrainOptions } from '../src/train/trainer.js';
import type { ProgressReporter } from '../src/train/progress.js';

const run = promisify(execFile);
const quiet = pino({ level: 'silent' });
const silentProgress: ProgressReporter = { update() {}, message() {}, done() {} };

let root: string;
let data: string;

/** A tiny model on 64² crops: features 288 × 8 × 8, narrow teacher and student. */
const tiny = (out: string, extra: Partial<TrainOptions> = {}): TrainOptions => ({
  data,
  preset: 'edge',
  mode: 'rgb',
  out,
  inputSize: 64,
  teacherHidden: 16,
  studentWidth: 32,
  residualBlocks: 1,
  teacherEpochs: 3,
  studentEpochs: 3,
  batchSize: 4,
  lr: 1e-3,
  seed: 3,
  runtime: { intraOpThreads: 1 },
  toolVersion: 'test',
  ...extra,
});

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ast-train-'));
  data = join(root, 'grass');
  await writeTextureDataset({ texture: 'grass', out: data, size: 64, trainCount: 20, testGoodCount: 4, testDefectCount: 2, seed: 5 });
});

/** An MVTec 3D-AD class folder of z maps: a tilted table with a box at a place that varies per sample. */
async function writeDepthClass(dir: string): Promise<void> {
  const size = 48;
  let n = 0;
  const put = async (split: string, type: string) => {
    const name = String(n++).padStart(3, '0');
    const k = n % 5;
    const xyz = new Float32Array(size * size * 3);
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const box = Math.abs(x - 20 - 2 * k) < 8 && Math.abs(y - 24) < 6;
        const dent = type === 'dent' && Math.abs(x - 30) < 3 && Math.abs(y - 12) < 3;
        const i = 3 * (y * size + x);
        xyz[i] = (x - size / 2) * 1e-3;
        xyz[i + 1] = (y - size / 2) * 1e-3;
        xyz[i + 2] = 0.6 + 0.0005 * x - (box ? 0.03 : 0) + (dent ? 0.01 : 0);
      }
    }
    await mkdir(join(dir, split, type, 'xyz'), { recursive: true });
    await writeFile(join(dir, split, type, 'xyz', `${name}.tiff`), encodeTiff({ width: size, height: size, channels: 3, data: xyz }));
    await mkdir(join(dir, split, type, 'rgb'), { recursive: true });
    await sharp(new Uint8Array(size * size * 3).fill(90 + 10 * k), { raw: { width: size, height: size, channels: 3 } }).png().toFile(join(dir, split, type, 'rgb', `${name}.png`));
  };
  for (let i = 0; i < 10; i++) await put('train', 'good');
  for (let i = 0; i < 3; i++) await put('validation', 'good');
  for (let i = 0; i < 2; i++) await put('test', 'good');
  for (let i = 0; i < 2; i++) await put('test', 'dent');
}

describe('training', () => {
  it('a depth model carries golden depth samples (prepared depth and mask) that its detector reproduces', async () => {
    const classDir = join(root, 'depth-data', 'box');
    await writeDepthClass(classDir);
    const out = join(root, 'depth-model');
    await train({ ...tiny(out), data: classDir, mode: 'depth', teacherEpochs: 1, studentEpochs: 1 }, quiet, silentProgress);
    const bundle = await readBundle(out);
    const golden = bundle.manifest.golden!;
    expect(golden).toMatchObject({ depthFile: 'golden-depth.bin', count: 3 });
    expect(golden.file).toBeUndefined();
    const samples = (await goldenSamplesFor(bundle))!;
    expect(samples.images).toBeNull();
    expect(samples.depth!.mask.data.some((v) => v > 0)).toBe(true); // the box is foreground
    const d = await Detector.load(bundle, 'detector', { intraOpThreads: 1, warmupRuns: 0 });
    try {
      const r = await d.inspect(samples.images, samples.depth);
      const scores = bundle.manifest.model.scoring.aggregation === 'mean' ? r.scoreMean : r.scoreMax;
      expect(compareGoldenScores(scores, samples)).toMatchObject({ ok: true });
    } finally {
      await d.release();
    }
  }, 120_000);

  it('a short run lowers the teacher NLL and the student loss, and the bundle reproduces the training verdicts', async () => {
    const out = join(root, 'short');
    const r = await train(tiny(out), quiet, silentProgress);
    const teacher = r.history.filter((h) => h.phase === 'teacher');
    const student = r.history.filter((h) => h.phase === 'student');
    expect(teacher.length).toBe(3);
    expect(student.length).toBe(3);
    expect(teacher[2]!.validationLoss!).toBeLessThan(teacher[0]!.validationLoss!);
    expect(teacher[2]!.trainLoss).toBeLessThan(teacher[0]!.trainLoss);
    expect(student[2]!.validationLoss!).toBeLessThan(student[0]!.validationLoss!);
    expect(r.manifest.provenance.source).toBe('train');
    expect(r.manifest.calibration!.method).toBe('false-reject-rate');

    // Calibration round trip: the fused detector of the written bundle, run on the held-out images
    // themselves (not on cached features), gives the scores and verdicts computed at training.
    const bundle = await readBundle(out);
    const split = splitTrainValidation(await loadDataset(data), 0.15, 3);
    expect(split.validation.map((s) => s.id)).toEqual(r.validationScores.map((v) => v.id));
    const d = await Detector.load(bundle, 'detector');
    for (const [i, s] of split.validation.entries()) {
      const rgb = await decodeRgb(s.image!, { width: 64, height: 64 });
      const res = await d.inspect(tensor('uint8', [1, 64, 64, 3], rgb));
      const expected = r.validationScores[i]!;
      expect(Math.abs(res.scoreMax[0]! - expected.score) / expected.score).toBeLessThan(1e-4);
      expect(res.scoreMax[0]! >= bundle.manifest.calibration!.threshold ? 'reject' : 'pass').toBe(expected.verdict);
    }
    await d.release();
    // At the default 1 % target no held-out good image is rejected.
    expect(r.validationScores.every((v) => v.verdict === 'pass')).toBe(true);
  });

  it('fine-tunes from a bundle: only the student when asked, the teacher untouched', async () => {
    const base = join(root, 'short');
    if (!existsSync(base)) return;
    const out = join(root, 'tuned');
    const r = await train(tiny(out, { from: base, finetune: 'student', studentEpochs: 1 }), quiet, silentProgress);
    expect(r.manifest.provenance).toMatchObject({ source: 'fine-tune', from: base });
    const w0 = decodeSafetensors(await readFile(join(base, 'weights.safetensors')));
    const w1 = decodeSafetensors(await readFile(join(out, 'weights.safetensors')));
    const same = (k: string) => Array.from(w0.get(k)!.data as Float32Array).every((v, i) => v === (w1.get(k)!.data as Float32Array)[i]);
    expect(same('teacher.module_list.3.s1.conv1.weight')).toBe(true);
    expect(same('student.conv1.weight')).toBe(false);
  });

  it('refuses to fine-tune a bundle in another mode, and a paper preset without its backbone', async () => {
    await expect(train(tiny(join(root, 'x'), { from: join(root, 'short'), mode: 'rgbd' }), quiet, silentProgress)).rejects.toThrow(/is a rgb model; cannot fine-tune it as rgbd/);
    await expect(train(tiny(join(root, 'y'), { preset: 'paper', inputSize: undefined }), quiet, silentProgress)).rejects.toThrow(/paper preset needs its backbone: pass --backbone/);
  });
});

describe('resume after SIGKILL', () => {
  const args = (out: string) => [
    'bin/ast-agent.js', 'train', '--data', data, '--out', out, '--input-size', '64', '--teacher-hidden', '16',
    '--student-width', '32', '--residual-blocks', '1', '--epochs', '3', '--batch-size', '4', '--lr', '1e-3',
    '--seed', '3', '--threads', '1', '--checkpoint-every', '2',
  ];

  it('a run killed mid-training continues from its checkpoint to the same weights as an uninterrupted run', async () => {
    const reference = join(root, 'uninterrupted');
    await run('node', args(reference), { env: { ...process.env, LOG_LEVEL: 'warn' } });

    const out = join(root, 'killed');
    const checkpoint = join(`${out}.work`, 'checkpoint.safetensors');
    const child = spawn('node', args(out), { env: { ...process.env, LOG_LEVEL: 'warn' }, stdio: 'ignore' });
    // Kill it as soon as a checkpoint from the student phase exists (teacher done, student under way).
    await new Promise<void>((resolve, reject) => {
      const timer = setInterval(async () => {
        if (child.exitCode !== null) {
          clearInterval(timer);
          reject(new Error('training finished before it could be killed'));
          return;
        }
        try {
          const text = (await readFile(checkpoint)).subarray(0, 4096).toString('latin1');
          if (text.includes('\\"phase\\":\\"student\\"')) {
            child.kill('SIGKILL');
            clearInterval(timer);
            resolve();
          }
        } catch {
          // no checkpoint yet
        }
      }, 20);
    });
    await new Promise((r) => child.once('exit', r));
    expect(existsSync(join(out, 'manifest.json'))).toBe(false);

    const { stdout } = await run('node', args(out), { env: { ...process.env, LOG_LEVEL: 'warn' } });
    expect(stdout).toMatch(/resumed from a checkpoint/);
    const a = decodeSafetensors(await readFile(join(reference, 'weights.safetensors')));
    const b = decodeSafetensors(await readFile(join(out, 'weights.safetensors')));
    let worst = 0;
    for (const [k, t] of a) {
      if (t.dtype !== 'float32') continue;
      const u = b.get(k)!.data as Float32Array;
      (t.data as Float32Array).forEach((v, i) => (worst = Math.max(worst, Math.abs(v - u[i]!))));
    }
    expect(worst).toBeLessThan(1e-6);
    expect(existsSync(`${out}.work`)).toBe(false); // the work folder is removed after success
  });
});
