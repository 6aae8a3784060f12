/**
 * `ast-agent demo`: the detector end to end on real images, with no camera, broker or GPU.
 * Builds the default backbone and an `edge`-preset bundle (untrained until `ast-agent train` exists:
 * it shows the pipeline and its speed, not detection quality), then scores crops of three CC0 textures.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import type { Logger } from 'pino';
import { assembleBundle } from '../bundle/assemble.js';
import { readBundle } from '../bundle/bundle-store.js';
import { modelParamsFor, PRESETS } from '../config/model-schema.js';
import { ensureDefaultBackbone, defaultBackboneCacheDir } from '../model/backbone/mobilenet-v2.js';
import { initStudent, initTeacher } from '../model/init.js';
import { tensor } from '../onnx/tensor.js';
import { Detector } from '../runtime/detector.js';

const TEXTURES = ['brick', 'grass', 'gravel'].map((n) => ({ name: n, file: `/usr/lib/python3/dist-packages/skimage/data/${n}.png` }));

async function demoBundle(dir: string, version: string): Promise<void> {
  const preset = PRESETS.edge;
  const backbone = await ensureDefaultBackbone({ layers: preset.backbone.layers });
  const params = modelParamsFor('edge', 'rgb', backbone.outputs.reduce((sum, o) => sum + o.channels, 0));
  const channels = params.featureChannels;
  await assembleBundle(dir, {
    id: 'demo-edge-untrained',
    version: '0.0.1',
    preset: 'edge',
    params,
    teacher: initTeacher({ channels, condChannels: params.posChannels, hidden: preset.teacher.hidden, kernelSizes: preset.teacher.kernelSizes, seed: 1 }),
    student: initStudent({ inChannels: channels + params.posChannels, outChannels: channels, width: preset.student.width, residualBlocks: preset.student.residualBlocks, seed: 2 }),
    input: { width: preset.inputSize, height: preset.inputSize, mean: backbone.input.mean, std: backbone.input.std, contextPad: preset.contextPad },
    backbone: {
      bytes: await readFile(backbone.file),
      name: backbone.family,
      description: 'MobileNetV2 α=1.4 (ImageNet, fine-tuned by nsfwjs), see docs/backbone.md',
      inputName: backbone.input.name,
      outputs: backbone.outputs.map((o) => ({ name: o.name, layer: o.layer, channels: o.channels, stride: o.stride })),
    },
    calibration: null,
    provenance: { source: 'synthetic', tool: `ast-edge ${version}`, createdAt: new Date().toISOString(), notes: 'untrained weights: a pipeline demo' },
  });
}

async function crop(file: string, left: number, top: number, size: number): Promise<Uint8Array> {
  return new Uint8Array(await sharp(file).extract({ left, top, width: size, height: size }).toColourspace('srgb').removeAlpha().raw().toBuffer());
}

export async function demoCommand(version: string, logger: Logger): Promise<void> {
  const dir = join(defaultBackboneCacheDir(), 'demo-edge-bundle');
  if (!existsSync(join(dir, 'manifest.json'))) await demoBundle(dir, version);
  let bundle = await readBundle(dir);
  // A bundle cached by an older version with other backbone layers is rebuilt.
  const layers = bundle.manifest.backbone?.outputs.map((o) => o.layer ?? '') ?? [];
  if (layers.join(',') !== PRESETS.edge.backbone.layers.join(',')) {
    await demoBundle(dir, version);
    bundle = await readBundle(dir);
  }
  const { width: size } = bundle.manifest.input;
  for (const t of TEXTURES) {
    if (!existsSync(t.file)) throw new Error(`demo image ${t.file} is missing: run deploy/setup.sh (package python3-skimage)`);
  }
  const detector = await Detector.load(bundle, 'detector', { intraOpThreads: 0 }, logger);
  console.log(`demo: bundle ${bundle.manifest.id} (${bundle.manifest.preset} preset, untrained weights: ast-agent train makes a real one)`);
  console.log(`demo: scoring ${size}×${size} crops of CC0 textures on ${detector.provider}`);
  const parts: Uint8Array[] = [];
  let seq = 0;
  for (const t of TEXTURES) {
    for (const offset of [0, 256]) {
      const rgb = await crop(t.file, offset, offset, size);
      parts.push(rgb);
      const started = performance.now();
      const r = await detector.inspect(tensor('uint8', [1, size, size, 3], rgb));
      const ms = performance.now() - started;
      console.log(`part ${String(++seq).padStart(3)}  ${t.name.padEnd(7)} score max ${r.scoreMax[0]!.toFixed(4)}  mean ${r.scoreMean[0]!.toFixed(4)}  ${ms.toFixed(1)} ms`);
    }
  }
  const batch = new Uint8Array(parts.length * size * size * 3);
  parts.forEach((p, i) => batch.set(p, i * size * size * 3));
  const started = performance.now();
  await detector.inspect(tensor('uint8', [parts.length, size, size, 3], batch));
  const ms = performance.now() - started;
  console.log(`batch of ${parts.length}: ${ms.toFixed(1)} ms (${((parts.length * 1000) / ms).toFixed(1)} parts/s)`);
  await detector.release();
}
