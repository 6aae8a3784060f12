/**
 * Golden samples of a bundle (manifest `golden`, file golden.bin): images with the scores the bundle's
 * detector graph gave them at build time. The agent scores them after loading a new model and refuses
 * (rolls back) a model whose scores differ: the cheapest proof that it runs as it was validated.
 */
import type { Golden } from '../config/bundle-manifest.js';
import { BundleError, readBundle, readBundleFile, sha256, type LoadedBundle } from './bundle-store.js';

export interface GoldenSamples {
  /** uint8 RGB, NHWC: the detector graph's input for `count` frames at once. */
  images: Uint8Array;
  shape: [count: number, height: number, width: number, channels: 3];
  /** Expected raw image score per sample (the manifest's scoring.aggregation). */
  scores: number[];
  tolerance: number;
}

/**
 * The golden samples of a loaded bundle (or a bundle path, read and verified first); null when the bundle
 * has none. The file is checked against its manifest entry again: it is read long after readBundle.
 */
export async function goldenSamplesFor(bundle: LoadedBundle | string): Promise<GoldenSamples | null> {
  const loaded = typeof bundle === 'string' ? await readBundle(bundle) : bundle;
  const golden = loaded.manifest.golden;
  if (!golden) return null;
  const images = await readBundleFile(loaded, golden.file);
  const entry = loaded.manifest.files[golden.file]!;
  if (images.byteLength !== entry.bytes || sha256(images) !== entry.sha256) {
    throw new BundleError(`${loaded.source}: "${golden.file}" changed since the bundle was loaded`, loaded.source, `files.${golden.file}`);
  }
  const { height, width } = loaded.manifest.input;
  return { images, shape: [golden.count, height, width, 3], scores: [...golden.scores], tolerance: golden.tolerance };
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

