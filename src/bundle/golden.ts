/**
 * Golden samples of a bundle (manifest `golden`: golden.bin for images, golden-depth.bin for depth): held-out
 * inputs with the scores the bundle's detector graph gave them at build time. The agent scores them after
 * loading a new model and refuses (rolls back) a model whose scores differ: the cheapest proof that it runs
 * as it was validated.
 */
import type { Golden } from '../config/bundle-manifest.js';
import { f32, type HostTensor } from '../onnx/tensor.js';
import { BundleError, readBundle, readBundleFile, sha256, type LoadedBundle } from './bundle-store.js';

/** The detector's depth inputs (the shape of runtime/detector.ts DepthInputs). */
export interface GoldenDepth {
  depth: HostTensor<'float32'>;
  mask: HostTensor<'float32'>;
}

export interface GoldenSamples {
  count: number;
  /** uint8 RGB NHWC at the input size, for models that take images; else null. */
  images: HostTensor<'uint8'> | null;
  /** Prepared depth and mask, for models that take depth. */
  depth?: GoldenDepth;
  /** Expected raw image score per sample (the manifest's scoring.aggregation). */
  scores: number[];
  tolerance: number;
}

/**
 * The golden samples of a loaded bundle (or a bundle path, read and verified first); null when the bundle
 * has none. The files are checked against their manifest entries again: they are read long after readBundle.
 */
export async function goldenSamplesFor(bundle: LoadedBundle | string): Promise<GoldenSamples | null> {
  const loaded = typeof bundle === 'string' ? await readBundle(bundle) : bundle;
  const { golden, input, featureSize, model } = loaded.manifest;
  if (!golden) return null;
  const read = async (file: string) => {
    const bytes = await readBundleFile(loaded, file);
    const entry = loaded.manifest.files[file]!;
    if (bytes.byteLength !== entry.bytes || sha256(bytes) !== entry.sha256) {
      throw new BundleError(`${loaded.source}: "${file}" changed since the bundle was loaded`, loaded.source, `files.${file}`);
    }
    return bytes;
  };
  const n = golden.count;
  const images = golden.file ? { dtype: 'uint8' as const, dims: [n, input.height, input.width, 3], data: Uint8Array.from(await read(golden.file)) } : null;
  let depth: GoldenDepth | undefined;
  if (golden.depthFile) {
    const bytes = await read(golden.depthFile);
    // Copied out to an aligned buffer: a Float32Array view needs a 4-byte aligned offset.
    const floats = new Float32Array(Uint8Array.from(bytes).buffer);
    const { height: h, width: w } = featureSize;
    const u = model.depth?.unshuffle ?? 1;
    const depthLength = n * h * u * w * u;
    depth = { depth: f32([n, 1, h * u, w * u], floats.slice(0, depthLength)), mask: f32([n, 1, h, w], floats.slice(depthLength)) };
  }
  return { count: n, images, ...(depth ? { depth } : {}), scores: [...golden.scores], tolerance: golden.tolerance };
}

/** The bytes of golden-depth.bin for prepared depth inputs (see GoldenSchema.depthFile). */
export function encodeGoldenDepth(depth: GoldenDepth): Uint8Array {
  const out = new Float32Array(depth.depth.data.length + depth.mask.data.length);
  out.set(depth.depth.data, 0);
  out.set(depth.mask.data, depth.depth.data.length);
  return new Uint8Array(out.buffer);
}

export interface GoldenMismatch {
  index: number;
  expected: number;
  actual: number;
  /** |actual − expected| / max(1, |expected|): compared with the tolerance. */
  error: number;
}

export interface GoldenComparison {
  ok: boolean;
  /** Largest scaled error over all samples (0 when they match exactly). */
  worst: number;
  mismatches: GoldenMismatch[];
}

/** Compares scores computed on the device with the expected ones (see GoldenSchema for the rule). */
export function compareGoldenScores(actual: ArrayLike<number>, golden: Pick<Golden, 'scores' | 'tolerance'>): GoldenComparison {
  if (actual.length !== golden.scores.length) {
    throw new RangeError(`golden self-test: ${actual.length} scores for ${golden.scores.length} samples`);
  }
  const mismatches: GoldenMismatch[] = [];
  let worst = 0;
  golden.scores.forEach((expected, index) => {
    const a = actual[index]!;
    // NaN compares false everywhere: treat it as an infinite error, never as a pass.
    const error = Number.isFinite(a) ? Math.abs(a - expected) / Math.max(1, Math.abs(expected)) : Infinity;
    worst = Math.max(worst, error);
    if (!(error <= golden.tolerance)) mismatches.push({ index, expected, actual: a, error });
  });
  return { ok: mismatches.length === 0, worst, mismatches };
}

