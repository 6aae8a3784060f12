/**
 * Features of a list of samples, computed once by the backbone (and the depth preparation), kept in
 * memory and cached on disk so a resumed run does not pay for them again.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import type { BundleManifest } from '../config/bundle-manifest.js';
import { prepareDepthFor } from '../runtime/depth-inputs.js';
import { decodeDepth, decodeRgb, type Sample } from './datasets/index.js';

export interface FeatureSet {
  ids: string[];
  /** teacher input channels (features + unshuffled depth) */
  channels: number;
  height: number;
  width: number;
  /** per sample [channels, h, w] */
  x: Float32Array[];
  /** per sample foreground mask [h, w] (depth modes) */
  mask: Float32Array[] | null;
}

export interface FeatureContext {
  manifest: Pick<BundleManifest, 'model' | 'input' | 'featureSize'>;
  /** uint8 NHWC frames → features; null in depth-only mode */
  featureSession: ort.InferenceSession | null;
  batch: number;
}

export function featureSetKey(parts: unknown): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 16);
}

async function depthFor(sample: Sample, ctx: FeatureContext): Promise<{ unshuffled: Float32Array; mask: Float32Array }> {
  if (!sample.depth) throw new Error(`sample ${sample.id} has no depth file, which mode ${ctx.manifest.model.mode} needs`);
  const p = prepareDepthFor(ctx.manifest, await decodeDepth(sample.depth));
  return { unshuffled: p.unshuffled, mask: p.featureMask };
}

/** Runs the backbone over the samples' images (in batches) and the depth preparation over their depth. */
export async function computeFeatureSet(samples: readonly Sample[], ctx: FeatureContext, onProgress?: (done: number) => void): Promise<FeatureSet> {
  const { model, input, featureSize } = ctx.manifest;
  const { height: h, width: w } = featureSize;
  const plane = h * w;
  const channels = model.featureChannels + model.depthChannels;
  const x: Float32Array[] = [];
  const masks: Float32Array[] = [];
  for (let start = 0; start < samples.length; start += ctx.batch) {
    const chunk = samples.slice(start, start + ctx.batch);
    let features: Float32Array | null = null;
    if (model.featureChannels > 0) {
      if (!ctx.featureSession) throw new Error('a feature session is needed for rgb/rgbd');
      const frame = input.width * input.height * 3;
      const frames = new Uint8Array(chunk.length * frame);
      for (let i = 0; i < chunk.length; i++) {
        const s = chunk[i]!;
        if (!s.image) throw new Error(`sample ${s.id} has no image, which mode ${model.mode} needs`);
        frames.set(await decodeRgb(s.image, { width: input.width, height: input.height }), i * frame);
      }
      const out = await ctx.featureSession.run({ image: new ort.Tensor('uint8', frames, [chunk.length, input.height, input.width, 3]) });
      features = out.features!.data as Float32Array;
    }
    for (let i = 0; i < chunk.length; i++) {
      const sx = new Float32Array(channels * plane);
      if (features) sx.set(features.subarray(i * model.featureChannels * plane, (i + 1) * model.featureChannels * plane));
      if (model.depthChannels > 0) {
        const d = await depthFor(chunk[i]!, ctx);
        sx.set(d.unshuffled, model.featureChannels * plane);
        masks.push(d.mask);
      }
      x.push(sx);
    }
    onProgress?.(Math.min(samples.length, start + ctx.batch));
  }
  return { ids: samples.map((s) => s.id), channels, height: h, width: w, x, mask: model.depthChannels > 0 ? masks : null };
}

/** Writes a feature set as one raw file plus a JSON header (atomically). */
export async function saveFeatureSet(dir: string, key: string, f: FeatureSet): Promise<void> {
  await mkdir(dir, { recursive: true });
  const path = join(dir, `features-${key}.bin`);
  const tmp = `${path}.tmp-${process.pid}`;
  const header = JSON.stringify({ ids: f.ids, channels: f.channels, height: f.height, width: f.width, masked: f.mask !== null });
  const fh = await open(tmp, 'w');
  try {
    const len = Buffer.alloc(4);
    len.writeUInt32LE(Buffer.byteLength(header));
    await fh.write(len);
    await fh.write(header);
    for (let i = 0; i < f.x.length; i++) {
      await fh.write(Buffer.from(f.x[i]!.buffer, f.x[i]!.byteOffset, f.x[i]!.byteLength));
      if (f.mask) await fh.write(Buffer.from(f.mask[i]!.buffer, f.mask[i]!.byteOffset, f.mask[i]!.byteLength));
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

export async function loadFeatureSet(dir: string, key: string): Promise<FeatureSet | null> {
  let bytes: Buffer;
  try {
    bytes = await readFile(join(dir, `features-${key}.bin`));
  } catch {
    return null;
  }
  const headerLen = bytes.readUInt32LE(0);
  const header = JSON.parse(bytes.subarray(4, 4 + headerLen).toString('utf8')) as {
    ids: string[];
    channels: number;
    height: number;
    width: number;
    masked: boolean;
  };
  const plane = header.height * header.width;
  const per = header.channels * plane;
  const expected = 4 + headerLen + header.ids.length * 4 * (per + (header.masked ? plane : 0));
  if (bytes.length !== expected) return null; // truncated by a crash: recompute
  const x: Float32Array[] = [];
  const mask: Float32Array[] = [];
  let pos = 4 + headerLen;
  const take = (n: number) => {
    const copy = new Float32Array(n);
    new Uint8Array(copy.buffer).set(bytes.subarray(pos, pos + 4 * n));
    pos += 4 * n;
    return copy;
  };
  for (let i = 0; i < header.ids.length; i++) {
    x.push(take(per));
    if (header.masked) mask.push(take(plane));
  }
  return { ids: header.ids, channels: header.channels, height: header.height, width: header.width, x, mask: header.masked ? mask : null };
}
