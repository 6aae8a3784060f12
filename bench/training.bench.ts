/**
 * Training speed: one optimizer step (forward, gradients, Adam) of the teacher and of the student at
 * batch 8, for the edge preset and the paper's shapes, as time and as direct-convolution GFLOP/s beside
 * the same run's ONNX Runtime MatMul peak; optionally PyTorch timing of the same steps in the same run;
 * and the wall time to train the edge preset on 200 images of 256². Prints figures; not a test.
 *
 *   npx tsx bench/training.bench.ts [--threads 2] [--steps 3] [--skip-wide] [--skip-wall] [--torch] [--json FILE]
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import * as ort from 'onnxruntime-node';
import { Command } from 'commander';
import pino from 'pino';
import { modelParamsFor, PRESETS } from '../src/config/model-schema.js';
import { Graph } from '../src/onnx/graph.js';
import * as op from '../src/onnx/ops.js';
import { encodeModel } from '../src/onnx/serialize.js';
import { initStudent, initTeacher } from '../src/model/init.js';
import { studentToStateDict, teacherToStateDict } from '../src/model/weights.js';
import { PAPER_ADAM } from '../src/train/adam.js';
import { TrainStepRunner } from '../src/train/step-runner.js';
import { buildStudentTrainStep, buildTeacherTrainStep } from '../src/train/train-graphs.js';
import { writeTextureDataset } from '../src/train/datasets/index.js';
import { train } from '../src/train/trainer.js';
import { studentFlops, teacherFlops } from './flops.js';

const o = new Command('training-bench')
  .option('--threads <n>', 'intra-op threads', (v) => Number(v), 2)
  .option('--steps <n>', 'timed steps per case (after 1 warm-up)', (v) => Number(v), 3)
  .option('--skip-wide', 'skip the width-1024 student (≈ 20 s a step, 3 GB)')
  .option('--skip-wall', 'skip the 200-image edge training run')
  .option('--torch', 'also time PyTorch (Debian python3-torch) on the same shapes')
  .option('--json <file>', 'write the figures as JSON')
  .parse()
  .opts<{ threads: number; steps: number; skipWide?: boolean; skipWall?: boolean; torch?: boolean; json?: string }>();

const BATCH = 8;

async function matmulPeak(): Promise<number> {
  const n = 2048;
  const g = new Graph('matmul');
  const a = g.input('a', 'float32', [n, n]);
  g.output(op.matmul(g, a, g.input('b', 'float32', [n, n])), 'c');
  const s = await ort.InferenceSession.create(encodeModel(g), { intraOpNumThreads: o.threads });
  const t = new ort.Tensor('float32', new Float32Array(n * n).map(() => Math.random()), [n, n]);
  await s.run({ a: t, b: t });
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const start = performance.now();
    await s.run({ a: t, b: t });
    best = Math.min(best, performance.now() - start);
  }
  await s.release();
  return (2 * n ** 3) / best / 1e6;
}

interface Case {
  name: string;
  kind: 'teacher' | 'student';
  channels: number;
  size: number;
  hidden?: number;
  width?: number;
  blocks?: number;
}

const edge = PRESETS.edge;
const cases: Case[] = [
  { name: 'edge teacher (184 ch, 32×32)', kind: 'teacher', channels: edge.backbone.channels, size: 32, hidden: edge.teacher.hidden },
  { name: 'edge student (w256, 2 blocks)', kind: 'student', channels: edge.backbone.channels, size: 32, width: 256, blocks: 2 },
  { name: 'paper teacher (304 ch, 24×24)', kind: 'teacher', channels: 304, size: 24, hidden: 64 },
  { name: 'paper student w256 (4 blocks)', kind: 'student', channels: 304, size: 24, width: 256, blocks: 4 },
  ...(o.skipWide ? [] : [{ name: 'paper student w1024 (4 blocks)', kind: 'student' as const, channels: 304, size: 24, width: 1024, blocks: 4 }]),
];

async function timeCase(c: Case): Promise<{ ms: number; gflop: number }> {
  const params = modelParamsFor('paper', 'rgb', c.channels);
  const shape = { batch: BATCH, channels: c.channels, height: c.size, width: c.size, masked: false };
  const x = new Float32Array(BATCH * c.channels * c.size * c.size).map(() => Math.random() - 0.5);
  let runner: TrainStepRunner;
  let gflop: number;
  if (c.kind === 'teacher') {
    const t = initTeacher({ channels: c.channels, condChannels: 32, hidden: c.hidden!, kernelSizes: [3, 3, 3, 5], seed: 1, gamma: 0.1 });
    runner = await TrainStepRunner.create(buildTeacherTrainStep(params, t, shape, PAPER_ADAM), teacherToStateDict(t), PAPER_ADAM, { intraOpThreads: o.threads });
    gflop = (3 * BATCH * teacherFlops({ channels: c.channels, cond: 32, hidden: c.hidden!, kernels: [3, 3, 3, 5] }, c.size, c.size)) / 1e9;
  } else {
    const s = initStudent({ inChannels: c.channels + 32, outChannels: c.channels, width: c.width!, residualBlocks: c.blocks!, seed: 2 });
    const p = { ...params, student: { ...params.student, width: c.width!, residualBlocks: c.blocks! } };
    runner = await TrainStepRunner.create(buildStudentTrainStep(p, s, shape, PAPER_ADAM), studentToStateDict(s), PAPER_ADAM, { intraOpThreads: o.threads });
    // The first layer needs no input gradient: 3× its forward work counts only twice.
    const full = studentFlops({ inChannels: c.channels + 32, width: c.width!, blocks: c.blocks!, outChannels: c.channels }, c.size, c.size);
    const first = 2 * 9 * (c.channels + 32) * c.width! * c.size * c.size;
    gflop = (BATCH * (3 * full - first)) / 1e9;
  }
  const batch = { x, ...(c.kind === 'student' ? { target: x } : {}) };
  await runner.run(batch);
  const times: number[] = [];
  for (let i = 0; i < o.steps; i++) {
    const start = performance.now();
    await runner.run(batch);
    times.push(performance.now() - start);
  }
  await runner.release();
  times.sort((a, b) => a - b);
  return { ms: times[Math.floor(times.length / 2)]!, gflop };
}

function torchTimes(): Record<string, number> | null {
  if (!o.torch) return null;
  try {
    const out = execFileSync('/usr/bin/python3', ['bench/torch_training.py', String(o.threads), o.skipWide ? '1' : '0'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return JSON.parse(out) as Record<string, number>;
  } catch {
    return null;
  }
}

const peak = await matmulPeak();
console.log(`ONNX Runtime ${ort.env.versions.common}, ${o.threads} threads; MatMul 2048³ peak in this run: ${peak.toFixed(1)} GFLOP/s`);
const rows: Record<string, unknown>[] = [];
const torch = torchTimes();
const authors: Record<string, number> = { 'paper teacher (304 ch, 24×24)': 373, 'paper student w256 (4 blocks)': 510, 'paper student w1024 (4 blocks)': 8400 };
console.log('| step (batch 8) | ms | GFLOP | GFLOP/s | of MatMul peak | PyTorch here (ms) | authors\' figure (ms) | ours / authors\' |');
console.log('|---|---|---|---|---|---|---|---|');
for (const c of cases) {
  const r = await timeCase(c);
  const rate = r.gflop / (r.ms / 1000);
  const t = torch?.[c.name];
  const a = authors[c.name];
  rows.push({ case: c.name, ms: r.ms, gflop: r.gflop, gflops: rate, fractionOfPeak: rate / peak, torchMs: t ?? null, authorsMs: a ?? null });
  console.log(
    `| ${c.name} | ${r.ms.toFixed(0)} | ${r.gflop.toFixed(1)} | ${rate.toFixed(1)} | ${((100 * rate) / peak).toFixed(0)} % | ${t ? t.toFixed(0) : '—'} | ${a ?? '—'} | ${a ? (r.ms / a).toFixed(2) : '—'} |`,
  );
}

if (!o.skipWall) {
  const data = join(tmpdir(), 'ast-bench-grass-200');
  if (!existsSync(data)) await writeTextureDataset({ texture: 'grass', out: data, size: 256, trainCount: 200, testGoodCount: 4, testDefectCount: 1 });
  const out = join(tmpdir(), 'ast-bench-grass-bundle');
  const r = await train(
    { data, preset: 'edge', mode: 'rgb', out, seed: 1, runtime: { intraOpThreads: o.threads }, toolVersion: 'bench', patience: 1000 },
    pino({ level: 'silent' }),
    { update() {}, message() {}, done() {} },
  );
  console.log(
    `edge preset, 200 images of 256² (${r.trainImages} train + ${r.validationImages} held out), ${edge.training.teacherEpochs}+${edge.training.studentEpochs} epochs: ${(r.seconds / 60).toFixed(1)} min wall`,
  );
  rows.push({ case: 'edge wall time, 200 images', seconds: r.seconds });
}
if (o.json) await writeFile(o.json, JSON.stringify({ peak, rows }, null, 2));
