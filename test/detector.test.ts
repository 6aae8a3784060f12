/**
 * The fused detector graph (uint8 frames → backbone → teacher/student → maps, scores) must give exactly
 * what its parts give when run one after another: same preprocessing, same head.
 */
import { mkdtemp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import sharp from 'sharp';
import * as ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { assembleBundle } from '../src/bundle/assemble.js';
import { readBundle, type LoadedBundle } from '../src/bundle/bundle-store.js';
import { ensureDefaultBackbone } from '../src/model/backbone/mobilenet-v2.js';
import { Detector } from '../src/runtime/detector.js';
import { tensor, f32 } from '../src/onnx/tensor.js';
import { tinyModel } from './helpers/tiny-bundle.js';
import { maxRelativeError } from './helpers/run-graph.js';

const BRICK = '/usr/lib/python3/dist-packages/skimage/data/brick.png';
const SIZE = 64;

let bundle: LoadedBundle;
let frames: Uint8Array;

beforeAll(async () => {
  const cacheDir = await mkdtemp(join(tmpdir(), 'ast-backbone-'));
  const backbone = await ensureDefaultBackbone({ cacheDir });
  const { params, teacher, student } = tinyModel('rgb', backbone.outputs[0]!.channels);
  const dir = await mkdtemp(join(tmpdir(), 'ast-detector-'));
  await assembleBundle(dir, {
    id: 'fused-test',
    version: '0.0.1',
    preset: 'custom',
    params,
    teacher,
    student,
    input: { width: SIZE, height: SIZE, mean: [0.1, 0.2, 0.3], std: [0.9, 0.8, 0.7] },
    backbone: {
      bytes: await readFile(backbone.file),
      name: backbone.family,
      description: 'test',
      inputName: backbone.input.name,
      outputs: backbone.outputs.map((o) => ({ name: o.name, layer: o.layer, channels: o.channels, stride: o.stride })),
    },
    calibration: null,
    provenance: { source: 'synthetic', tool: 'test', createdAt: new Date().toISOString() },
  });
  bundle = await readBundle(dir);
  // Two real frames: crops of a CC0 brick texture, grey replicated to RGB.
  const crops = await Promise.all(
    [0, 200].map((left) => sharp(BRICK).extract({ left, top: left, width: 128, height: 128 }).resize(SIZE, SIZE).toColourspace('srgb').removeAlpha().raw().toBuffer()),
  );
  frames = new Uint8Array(2 * SIZE * SIZE * 3);
  crops.forEach((c, i) => {
    const rgb = c.length === SIZE * SIZE ? Uint8Array.from({ length: SIZE * SIZE * 3 }, (_, j) => c[Math.floor(j / 3)]!) : c;
    frames.set(rgb, i * SIZE * SIZE * 3);
  });
});

describe('fused detector graph', () => {
  it('equals backbone then head, run separately', async () => {
    const m = bundle.manifest;
    expect(m.featureSize).toEqual({ height: SIZE / 8, width: SIZE / 8 });
    const fused = await Detector.load(bundle, 'detector');
    const result = await fused.inspect(tensor('uint8', [2, SIZE, SIZE, 3], frames));
    await fused.release();
    expect(result.mapFull!.length).toBe(2 * SIZE * SIZE);

    // The same pipeline by hand: normalise in JavaScript, backbone session, head session.
    const nchw = new Float32Array(2 * 3 * SIZE * SIZE);
    for (let n = 0; n < 2; n++)
      for (let c = 0; c < 3; c++)
        for (let p = 0; p < SIZE * SIZE; p++)
          nchw[((n * 3 + c) * SIZE * SIZE) + p] = (frames[(n * SIZE * SIZE + p) * 3 + c]! / 255 - m.input.mean[c]!) / m.input.std[c]!;
    const backbone = await ort.InferenceSession.create(join(bundle.dir, m.backbone!.file));
    const feats = (await backbone.run({ [m.backbone!.inputName]: new ort.Tensor('float32', nchw, [2, 3, SIZE, SIZE]) }))[m.backbone!.outputs[0]!.name]!;
    const head = await Detector.load(bundle, 'head');
    const byParts = await head.scoreFeatures(f32([...feats.dims], feats.data as Float32Array));
    await head.release();

    expect(maxRelativeError(result.map, byParts.map)).toBeLessThan(1e-4);
    expect(maxRelativeError(result.scoreMax, byParts.scoreMax)).toBeLessThan(1e-4);
    expect(maxRelativeError(result.scoreMean, byParts.scoreMean)).toBeLessThan(1e-4);
    // Different crops of the texture give different scores: the frames really reach the model.
    expect(result.scoreMax[0]).not.toBeCloseTo(result.scoreMax[1]!, 4);
  });

  it('refuses frames of the wrong size with the expected shape', async () => {
    const d = await Detector.load(bundle, 'detector', { warmupRuns: 0 });
    await expect(d.inspect(tensor('uint8', [1, 32, 32, 3], new Uint8Array(32 * 32 * 3)))).rejects.toThrow(
      /frames have shape \[1, 32, 32, 3\] but bundle fused-test expects \[N, 64, 64, 3\]/,
    );
    await d.release();
  });
});
