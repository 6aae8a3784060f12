/** `ast-agent score`: scores feature maps from a .npy file with a bundle's head graph. */
import { readFile, writeFile, rename } from 'node:fs/promises';
import type { Logger } from 'pino';
import { readBundle } from '../bundle/bundle-store.js';
import { decodeNpy, encodeNpy } from '../formats/npy.js';
import { Detector } from '../runtime/detector.js';
import type { RuntimeOptions } from '../config/runtime-schema.js';
import { f32, type HostTensor } from '../onnx/tensor.js';

export interface ScoreOptions {
  bundle: string;
  features?: string;
  depth?: string;
  mask?: string;
  out: string;
  maps?: string;
  runtime: Partial<RuntimeOptions>;
}

async function readFloatNpy(path: string, what: string): Promise<HostTensor<'float32'>> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new Error(`cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const t = decodeNpy(bytes, path);
  if (t.dtype !== 'float32') throw new Error(`${what} ${path} holds ${t.dtype}; float32 is required`);
  return t as HostTensor<'float32'>;
}

/** Adds the channel axis that [N, H, W] depth/mask files leave out. */
function withChannel(t: HostTensor<'float32'>): HostTensor<'float32'> {
  return t.dims.length === 3 ? f32([t.dims[0]!, 1, t.dims[1]!, t.dims[2]!], t.data) : t;
}

async function writeAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, data);
  await rename(tmp, path);
}

export async function scoreCommand(o: ScoreOptions, logger: Logger): Promise<{ samples: { max: number; mean: number }[] }> {
  const bundle = await readBundle(o.bundle);
  const features = o.features ? await readFloatNpy(o.features, 'features') : null;
  const depth =
    o.depth && o.mask ? { depth: withChannel(await readFloatNpy(o.depth, 'depth')), mask: withChannel(await readFloatNpy(o.mask, 'mask')) } : undefined;
  const detector = await Detector.load(bundle, 'head', o.runtime, logger);
  try {
    const started = performance.now();
    const r = await detector.scoreFeatures(features, depth);
    logger.info({ batch: r.batch, ms: +(performance.now() - started).toFixed(2), provider: detector.provider }, 'scored features');
    const samples = Array.from(r.scoreMax, (max, i) => ({ max, mean: r.scoreMean[i]! }));
    const result = { samples };
    await writeAtomic(o.out, JSON.stringify(result, null, 2) + '\n');
    if (o.maps) {
      const { height, width } = bundle.manifest.featureSize;
      await writeAtomic(o.maps, encodeNpy(f32([r.batch, height, width], r.map)));
    }
    return result;
  } finally {
    await detector.release();
  }
}
