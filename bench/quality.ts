/**
 * Detection quality on real images available offline, AST beside a kNN baseline on the same features.
 * Prints the README's table (markdown) and writes every figure as JSON. Not a test: it trains models.
 *
 *   npx tsx bench/quality.ts [--work DIR] [--textures brick,grass,gravel] [--fmnist all|none|t-shirt_top,...]
 *                            [--texture-epochs N] [--fmnist-epochs N] [--fmnist-input N] [--threads N] [--json FILE]
 *
 * Textures: CC0 brick/grass/gravel from python3-skimage, 256² crops, synthetic defects with masks
 * (src/train/datasets/synthetic-defects.ts), edge preset. Fashion-MNIST: train on one class, test on all
 * ten (100 test images per class), edge preset at a smaller input size (28² digits upscaled).
 */
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Command } from 'commander';
import pino from 'pino';
import { readBundle, readBundleFile } from '../src/bundle/bundle-store.js';
import { buildFeatureModel } from '../src/model/detector-graph.js';
import { decodeModel } from '../src/onnx/serialize.js';
import { loadSession } from '../src/runtime/session.js';
import { FASHION_MNIST_CLASSES, loadDataset, writeOneClassDataset, writeTextureDataset } from '../src/train/datasets/index.js';
import { evaluate } from '../src/train/evaluate.js';
import { auroc } from '../src/train/evaluation/metrics.js';
import { computeFeatureSet } from '../src/train/feature-set.js';
import { knnScores } from '../src/train/knn-baseline.js';
import { splitTrainValidation, train, type TrainOptions } from '../src/train/trainer.js';
import type { ProgressReporter } from '../src/train/progress.js';

const program = new Command('quality')
  .option('--work <dir>', 'datasets, bundles and reports', '/tmp/ast-quality')
  .option('--textures <list>', 'textures', 'brick,grass,gravel')
  .option('--fmnist <list>', "Fashion-MNIST classes ('all', 'none' or a list)", 'all')
  .option('--texture-epochs <n>', 'teacher and student epochs on textures', (v) => Number(v))
  .option('--fmnist-epochs <n>', 'teacher and student epochs on Fashion-MNIST', (v) => Number(v), 6)
  .option('--fmnist-input <n>', 'input size for Fashion-MNIST', (v) => Number(v), 64)
  .option('--threads <n>', 'intra-op threads', (v) => Number(v), 2)
  .option('--lr <rate>', 'learning rate (default: the preset)', (v) => Number(v))
  .option('--json <file>', 'also write the figures here')
  .parse();
const o = program.opts<{ work: string; textures: string; fmnist: string; textureEpochs?: number; fmnistEpochs: number; fmnistInput: number; threads: number; lr?: number; json?: string }>();
const logger = pino({ level: process.env.LOG_LEVEL ?? 'warn' }, pino.destination(2));
const progress: ProgressReporter = {
  update() {},
  message(text) {
    if (process.env.VERBOSE) process.stderr.write(`  ${text}\n`);
  },
  done() {},
};

interface Row {
  dataset: string;
  trainImages: number;
  trainSeconds: number;
  astImageAuroc: number;
  astImageAurocMean: number;
  astPixelAuroc: number | null;
  knnGlobal: number;
  knnPatch: number;
}

async function baseline(bundleDir: string, data: string, seed: number): Promise<{ global: number; patch: number }> {
  const bundle = await readBundle(bundleDir);
  const m = bundle.manifest;
  const session = (
    await loadSession(
      buildFeatureModel({ input: m.input, backbone: { spec: m.backbone!, model: decodeModel(await readBundleFile(bundle, m.backbone!.file)) }, featureSize: m.featureSize }),
      { intraOpThreads: o.threads },
    )
  ).session;
  const dataset = await loadDataset(data);
  const split = splitTrainValidation(dataset, 0.15, seed);
  const ctx = { manifest: m, featureSession: session, batch: 8 };
  const trainSet = await computeFeatureSet(split.train, ctx);
  const testSet = await computeFeatureSet(dataset.test, ctx);
  await session.release();
  const labels = dataset.test.map((s) => (s.label === 'good' ? 0 : 1) as 0 | 1);
  return {
    global: auroc(await knnScores(trainSet, testSet, { variant: 'global' }), labels),
    patch: auroc(await knnScores(trainSet, testSet, { variant: 'patch' }), labels),
  };
}

async function runOne(name: string, data: string, extra: Partial<TrainOptions>): Promise<Row> {
  const out = join(o.work, 'bundles', name);
  const seed = 1;
  const r = await train(
    { data, preset: 'edge', mode: 'rgb', out, seed, runtime: { intraOpThreads: o.threads }, toolVersion: 'quality', ...(o.lr ? { lr: o.lr } : {}), ...extra },
    logger,
    progress,
  );
  const metrics = await evaluate({ bundle: out, data, report: join(o.work, 'reports', name), runtime: { intraOpThreads: o.threads } }, logger);
  const b = await baseline(out, data, seed);
  const row: Row = {
    dataset: name,
    trainImages: r.trainImages,
    trainSeconds: Math.round(r.seconds),
    astImageAuroc: metrics.image.aurocMax!,
    astImageAurocMean: metrics.image.aurocMean!,
    astPixelAuroc: metrics.pixel?.auroc ?? null,
    knnGlobal: b.global,
    knnPatch: b.patch,
  };
  process.stderr.write(`${JSON.stringify(row)}\n`);
  return row;
}

const rows: Row[] = [];
const textures = o.textures ? o.textures.split(',').filter(Boolean) : [];
for (const t of textures) {
  const data = join(o.work, 'data', 'textures', t);
  if (!existsSync(data)) await writeTextureDataset({ texture: t, out: data });
  rows.push(await runOne(`texture/${t}`, data, { ...(o.textureEpochs ? { teacherEpochs: o.textureEpochs, studentEpochs: o.textureEpochs } : {}) }));
}
const classes = o.fmnist === 'none' ? [] : o.fmnist === 'all' ? [...FASHION_MNIST_CLASSES] : o.fmnist.split(',');
for (const c of classes) {
  const data = join(o.work, 'data', 'fashion-mnist', c);
  if (!existsSync(data)) {
    await mkdir(join(o.work, 'data', 'fashion-mnist'), { recursive: true });
    await writeOneClassDataset({ goodClass: c, out: data });
  }
  rows.push(await runOne(`fashion-mnist/${c}`, data, { inputSize: o.fmnistInput, teacherEpochs: o.fmnistEpochs, studentEpochs: o.fmnistEpochs }));
}

const f = (v: number | null) => (v === null ? '—' : v.toFixed(3));
const lines = [
  '| dataset | train images | train time | AST image AUROC (max) | AST image AUROC (mean) | AST pixel AUROC | kNN global | kNN patch |',
  '|---|---|---|---|---|---|---|---|',
  ...rows.map((r) => `| ${r.dataset} | ${r.trainImages} | ${r.trainSeconds} s | ${f(r.astImageAuroc)} | ${f(r.astImageAurocMean)} | ${f(r.astPixelAuroc)} | ${f(r.knnGlobal)} | ${f(r.knnPatch)} |`),
];
const fm = rows.filter((r) => r.dataset.startsWith('fashion-mnist/'));
if (fm.length) {
  const mean = (k: keyof Row) => fm.reduce((s, r) => s + (r[k] as number), 0) / fm.length;
  lines.push(`| **Fashion-MNIST mean** | | | ${f(mean('astImageAuroc'))} | ${f(mean('astImageAurocMean'))} | — | ${f(mean('knnGlobal'))} | ${f(mean('knnPatch'))} |`);
}
console.log(lines.join('\n'));
if (o.json) await writeFile(o.json, JSON.stringify(rows, null, 2));
