/**
 * The generated MobileNetV2 backbone (ONNX, run by onnxruntime-node) against the same TF.js graph model run by
 * TensorFlow.js' pure-JS CPU backend, on a real image (scikit-image's CC0 `brick.png` from Debian).
 *
 * TF.js reads the *raw, still quantized* weight bytes and dequantizes them itself, so the comparison also
 * checks our reader's dequantization independently.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import * as tf from '@tensorflow/tfjs';
import { loadTfjsGraphModel, type TfjsGraphModel } from '../src/model/backbone/tfjs-graph.js';
import {
  BackboneError,
  buildMobileNetV2Backbone,
  ensureDefaultBackbone,
  locateNsfwjsMobileNetV2,
  type BuiltBackbone,
} from '../src/model/backbone/mobilenet-v2.js';

const BRICK = '/usr/lib/python3/dist-packages/skimage/data/brick.png';
const LAYERS = ['expanded_conv_6/expand/Relu6', 'expanded_conv_13/expand/Relu6'];

/** brick.png (512×512 grey) → resized, grey replicated to RGB, in [0,1]; both NHWC (TF.js) and NCHW (ONNX). */
async function brick(h: number, w: number): Promise<{ nhwc: Float32Array; nchw: Float32Array }> {
  const { data, info } = await sharp(BRICK)
    .toColourspace('b-w')
    .resize(w, h, { fit: 'fill' })
    .raw()
    .toBuffer({ resolveWithObject: true });
  expect(info.channels).toBe(1);
  const nhwc = new Float32Array(h * w * 3);
  const nchw = new Float32Array(h * w * 3);
  for (let i = 0; i < h * w; i++) {
    const v = data[i]! / 255;
    for (let c = 0; c < 3; c++) {
      nhwc[i * 3 + c] = v;
      nchw[c * h * w + i] = v;
    }
  }
  return { nhwc, nchw };
}

/** Max |a − b| between an NCHW ONNX output and an NHWC TF.js reference, plus the reference's scale. */
function compare(onnx: Float32Array, ref: Float32Array, [, oh, ow, c]: number[]) {
  let maxDiff = 0;
  let maxRef = 0;
  let sumDiff = 0;
  for (let y = 0; y < oh!; y++)
    for (let x = 0; x < ow!; x++)
      for (let k = 0; k < c!; k++) {
        const r = ref[(y * ow! + x) * c! + k]!;
        const d = Math.abs(onnx[(k * oh! + y) * ow! + x]! - r);
        maxDiff = Math.max(maxDiff, d);
        sumDiff += d;
        maxRef = Math.max(maxRef, Math.abs(r));
      }
  return { maxDiff, maxRef, meanDiff: sumDiff / ref.length };
}

function std(a: Float32Array): number {
  let s = 0;
  let s2 = 0;
  for (const v of a) {
    s += v;
    s2 += v * v;
  }
  const m = s / a.length;
  return Math.sqrt(Math.max(0, s2 / a.length - m * m));
}

describe('MobileNetV2 backbone from nsfwjs', () => {
  let tfModel: TfjsGraphModel;
  let backbone: BuiltBackbone;
  let session: ort.InferenceSession;
  let graphModel: tf.GraphModel;

  beforeAll(async () => {
    await tf.setBackend('cpu');
    tfModel = await loadTfjsGraphModel(locateNsfwjsMobileNetV2().dir);
    backbone = await buildMobileNetV2Backbone({ layers: LAYERS });
    session = await ort.InferenceSession.create(backbone.model);
    // The same model for TF.js, from the raw quantized bytes; the input placeholder is relaxed from
    // [-1,224,224,3] to any size so TF.js can be the reference at odd sizes too.
    const topology = structuredClone(tfModel.json.modelTopology);
    for (const n of topology.node) {
      if (n.op === 'Placeholder') n.attr!.shape = { shape: { dim: [{ size: '-1' }, { size: '-1' }, { size: '-1' }, { size: '3' }] } };
    }
    graphModel = await tf.loadGraphModel(
      tf.io.fromMemory({
        modelTopology: topology,
        weightSpecs: tfModel.weightSpecs as tf.io.WeightsManifestEntry[],
        weightData: tfModel.weightData.slice().buffer,
      }),
    );
  });

  afterAll(async () => {
    await session?.release();
    graphModel?.dispose();
  });

  it('describes its input and outputs', () => {
    expect(backbone.input).toMatchObject({ name: 'image', layout: 'NCHW', range: [0, 1], mean: [0, 0, 0], std: [1, 1, 1] });
    expect(backbone.outputs.map(({ name, layer, channels, stride }) => ({ name, layer, channels, stride }))).toEqual([
      { name: 'feat_s8', layer: LAYERS[0], channels: 288, stride: 8 },
      { name: 'feat_s16', layer: LAYERS[1], channels: 816, stride: 16 },
    ]);
    expect(session.inputNames).toEqual(['image']);
    expect(session.outputNames).toEqual(['feat_s8', 'feat_s16']);
    expect(backbone.source).toMatch(/^nsfwjs@/);
  });

  it('dequantizes every weight exactly as TF.js does', () => {
    const tfWeights = graphModel.weights;
    for (const spec of tfModel.weightSpecs) {
      const ours = tfModel.weights.get(spec.name)!;
      const theirs = tfWeights[spec.name]![0]!.dataSync();
      expect(ours.data.length, spec.name).toBe(theirs.length);
      expect(Buffer.from(ours.data.buffer).equals(Buffer.from((theirs as Float32Array).buffer)), spec.name).toBe(true);
    }
  });

  // 224×224 is the network's native size; 151×203 has odd sides, which exercises TF's SAME padding rule
  // (extra pad after) at the stride-2 convolutions.
  for (const [h, w] of [
    [224, 224],
    [151, 203],
  ] as const) {
    it(`matches TF.js on brick.png at ${h}×${w}`, async () => {
      const img = await brick(h, w);
      const refs = tf.tidy(() => {
        const out = graphModel.execute({ input: tf.tensor4d(img.nhwc, [1, h, w, 3]) }, backbone.outputs.map((o) => o.node));
        return (out as tf.Tensor[]).map((t) => ({ shape: t.shape, data: t.dataSync() as Float32Array }));
      });
      const got = await session.run({ image: new ort.Tensor('float32', img.nchw, [1, 3, h, w]) });
      backbone.outputs.forEach((spec, k) => {
        const ref = refs[k]!;
        const out = got[spec.name]!;
        expect(out.dims).toEqual([1, spec.channels, Math.ceil(h / spec.stride), Math.ceil(w / spec.stride)]);
        expect(ref.shape).toEqual([1, Math.ceil(h / spec.stride), Math.ceil(w / spec.stride), spec.channels]);
        const data = out.data as Float32Array;
        const { maxDiff, maxRef, meanDiff } = compare(data, ref.data, ref.shape);
        console.log(
          `[backbone] ${h}x${w} ${spec.name} (${spec.layer}): max|onnx-tfjs| = ${maxDiff.toExponential(2)}, ` +
            `mean = ${meanDiff.toExponential(2)}, max|ref| = ${maxRef.toFixed(3)}, ratio = ${(maxDiff / maxRef).toExponential(2)}, ` +
            `std = ${std(data).toFixed(3)}`,
        );
        expect(maxRef).toBeGreaterThan(0.5); // real activations, not a dead output
        expect(std(data)).toBeGreaterThan(0.05);
        expect(maxDiff).toBeLessThanOrEqual(1e-3 * maxRef);
      });
    });
  }

  it('takes dynamic batch and sizes: 2×3×160×224 → H/8×W/8 and H/16×W/16', async () => {
    const a = await brick(160, 224);
    const x = new Float32Array(2 * a.nchw.length);
    x.set(a.nchw, 0);
    x.set(a.nchw.map((v) => 1 - v), a.nchw.length);
    const out = await session.run({ image: new ort.Tensor('float32', x, [2, 3, 160, 224]) });
    expect(out.feat_s8!.dims).toEqual([2, 288, 20, 28]);
    expect(out.feat_s16!.dims).toEqual([2, 816, 10, 14]);
  });

  it('rejects an unknown layer, naming it', async () => {
    await expect(buildMobileNetV2Backbone({ layers: ['expanded_conv_99/expand/Relu6'] })).rejects.toThrow(
      /unknown layer "expanded_conv_99\/expand\/Relu6"/,
    );
    await expect(buildMobileNetV2Backbone({ layers: ['expanded_conv_99/expand/Relu6'] })).rejects.toBeInstanceOf(BackboneError);
  });

  it('rejects a layer past what the converter supports, naming the op', async () => {
    await expect(buildMobileNetV2Backbone({ layers: ['Logits/AvgPool'] })).rejects.toThrow(/AvgPool.*not supported/);
  });

  it('accepts any other node of the graph, with channels and stride inferred', async () => {
    const b = await buildMobileNetV2Backbone({ layers: ['expanded_conv_2/add'] });
    expect(b.outputs).toMatchObject([{ name: 'feat_expanded_conv_2_add', channels: 32, stride: 4 }]);
  });

  it('caches the generated model and descriptor, and reuses them', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'ast-backbone-'));
    try {
      const first = await ensureDefaultBackbone({ cacheDir: dir });
      expect(first.cached).toBe(false);
      expect(path.basename(first.file)).toMatch(/^backbone-mobilenetv2-[0-9a-f]{16}\.onnx$/);
      expect(existsSync(first.file) && existsSync(first.descriptorFile)).toBe(true);
      expect(first.outputs).toMatchObject([{ name: 'feat_s8', channels: 288, stride: 8 }]);
      const second = await ensureDefaultBackbone({ cacheDir: dir });
      expect(second.cached).toBe(true);
      expect(second.file).toBe(first.file);
      expect(second.sha256).toBe(first.sha256);
      expect(second.outputs).toEqual(first.outputs);
      const other = await ensureDefaultBackbone({ cacheDir: dir, layers: ['expanded_conv_13/expand/Relu6'] });
      expect(other.file).not.toBe(first.file);
      expect(other.outputs).toMatchObject([{ name: 'feat_s16', channels: 816, stride: 16 }]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
