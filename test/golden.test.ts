/**
 * Golden samples (manifest `golden`, golden.bin; src/bundle/golden.ts): stored by assembleBundle, read back
 * by goldenSamplesFor, and the self-test comparison, on a fused bundle with the real backbone scored by
 * ONNX Runtime. Bundles without golden samples stay valid.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assembleBundle, type AssembleInput } from '../src/bundle/assemble.js';
import { BundleManifestSchema } from '../src/config/bundle-manifest.js';
import { BundleError, readBundle } from '../src/bundle/bundle-store.js';
import { compareGoldenScores, goldenSamplesFor } from '../src/bundle/golden.js';
import { Detector } from '../src/runtime/detector.js';
import { describeBundle } from '../src/cli/describe-bundle.js';
import { tinyBundleInput, writeTinyBundle } from './helpers/tiny-bundle.js';
import { depthInputsFor } from '../src/runtime/depth-inputs.js';
import { goldenFromInputs } from '../src/train/trainer.js';
import { agentBundleInput, boxOnTableFrames } from './helpers/agent-bundle.js';

const SIZE = 64;
const COUNT = 3;
let root: string;
let input: AssembleInput;
let images: Uint8Array;
let scores: number[];

async function scoreImages(dir: string, imgs: Uint8Array, count: number): Promise<number[]> {
  const b = await readBundle(dir);
  const d = await Detector.load(b, 'detector', { intraOpThreads: 1, warmupRuns: 0 });
  try {
    const r = await d.inspect({ dtype: 'uint8', dims: [count, SIZE, SIZE, 3], data: imgs });
    return Array.from(b.manifest.model.scoring.aggregation === 'max' ? r.scoreMax : r.scoreMean);
  } finally {
    await d.release();
  }
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ast-golden-'));
  input = await agentBundleInput({ id: 'golden-test', size: SIZE, calibration: null, createdAt: '2025-01-01T00:00:00.000Z' });
  await assembleBundle(join(root, 'plain'), input);
  images = new Uint8Array(COUNT * SIZE * SIZE * 3).map((_, i) => (i * 37 + (i >> 7) * 11) & 0xff);
  scores = await scoreImages(join(root, 'plain'), images, COUNT);
}, 120_000);

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('golden samples', () => {
  it('a bundle without golden samples has none (and stays valid)', async () => {
    expect((await readBundle(join(root, 'plain'))).manifest.golden).toBeUndefined();
    expect(await goldenSamplesFor(join(root, 'plain'))).toBeNull();
  });

  it('stored as golden.bin with the manifest entry; read back; the device scores them the same', async () => {
    const dir = join(root, 'with-golden');
    const m = await assembleBundle(dir, { ...input, golden: { images, count: COUNT, scores } });
    expect(m.golden).toEqual({ file: 'golden.bin', count: COUNT, scores, tolerance: 1e-3 });
    expect(describeBundle(m, dir)).toContain('Golden samples: 3 (frames) with their expected scores, re-scored on the device after an update (tolerance 0.001).');
    expect(m.files['golden.bin']!.bytes).toBe(COUNT * SIZE * SIZE * 3);
    const g = (await goldenSamplesFor(dir))!;
    expect(g.images!.dims).toEqual([COUNT, SIZE, SIZE, 3]);
    expect(g.depth).toBeUndefined();
    expect(Buffer.from(g.images!.data).equals(Buffer.from(images))).toBe(true);
    const again = await scoreImages(dir, g.images!.data, COUNT);
    const cmp = compareGoldenScores(again, g);
    expect(cmp).toMatchObject({ ok: true, mismatches: [] });
    expect(cmp.worst).toBeLessThan(1e-5);
  });

  it('the comparison names the samples off by more than the tolerance (relative above 1), and NaN never passes', () => {
    const golden = { scores: [0.5, 10, 200], tolerance: 0.01 };
    expect(compareGoldenScores([0.505, 10.09, 201.9], golden).ok).toBe(true);
    const bad = compareGoldenScores([0.52, 10, Number.NaN], golden);
    expect(bad.ok).toBe(false);
    expect(bad.mismatches.map((x) => x.index)).toEqual([0, 2]);
    expect(bad.mismatches[0]!.error).toBeCloseTo(0.02, 10);
    expect(() => compareGoldenScores([1], golden)).toThrow(/1 scores for 3 samples/);
  });

  it('the manifest refuses golden samples that do not fit: wrong byte count, score count, or no detector graph', async () => {
    await expect(assembleBundle(join(root, 'bad-size'), { ...input, golden: { images: images.subarray(1), count: COUNT, scores } })).rejects.toThrow(
      /golden\.file: "golden\.bin" has 36863 bytes, 3 × 64 × 64 × 3 = 36864 expected/,
    );
    await expect(assembleBundle(join(root, 'bad-scores'), { ...input, golden: { images, count: COUNT, scores: [1] } })).rejects.toThrow(
      /golden\.scores: has 1 scores for 3 samples/,
    );
    await writeTinyBundle(join(root, 'tiny'));
    const tiny = await readBundle(join(root, 'tiny'));
    expect(tiny.manifest.graphs.detector).toBeUndefined();
    const r = BundleManifestSchema.safeParse({
      ...tiny.manifest,
      golden: { file: 'golden.bin', count: 1, scores: [1], tolerance: 0.1 },
      files: { ...tiny.manifest.files, 'golden.bin': { sha256: '0'.repeat(64), bytes: 32 * 48 * 3 } },
    });
    expect(r.success).toBe(false);
    expect(r.error!.issues.map((i) => i.message)).toContain('golden samples are detector inputs: they need a detector graph');
  });

  it('a depth model stores prepared depth and mask (golden-depth.bin, no images); read back, they score the same', async () => {
    const tiny = tinyBundleInput('depth', 'golden-depth');
    const plainDir = join(root, 'depth-plain');
    const plain = await assembleBundle(plainDir, tiny);
    expect(plain.graphs.detector).toBeDefined();
    const frames = boxOnTableFrames(3, 60, 40);
    const depth = depthInputsFor(plain, frames);
    const golden = await goldenFromInputs(plainDir, { depth }, frames.length);
    const dir = join(root, 'depth-golden');
    const m = await assembleBundle(dir, { ...tiny, golden });
    const { height: h, width: w } = m.featureSize;
    const u = m.model.depth!.unshuffle;
    expect(m.golden).toEqual({ depthFile: 'golden-depth.bin', count: 3, scores: golden.scores, tolerance: 1e-3 });
    expect(m.files['golden-depth.bin']!.bytes).toBe(4 * 3 * (h * u * w * u + h * w));
    expect(m.files['golden.bin']).toBeUndefined();
    expect(describeBundle(m, dir)).toContain('Golden samples: 3 (prepared depth and mask) with their expected scores');

    const g = (await goldenSamplesFor(dir))!;
    expect(g.images).toBeNull();
    expect(g.depth!.depth.dims).toEqual([3, 1, h * u, w * u]);
    expect(g.depth!.mask.dims).toEqual([3, 1, h, w]);
    expect(Array.from(g.depth!.depth.data)).toEqual(Array.from(depth.depth.data));
    expect(Array.from(g.depth!.mask.data)).toEqual(Array.from(depth.mask.data));
    const d = await Detector.load(await readBundle(dir), 'detector', { intraOpThreads: 1, warmupRuns: 0 });
    try {
      const r = await d.inspect(g.images, g.depth);
      const again = m.model.scoring.aggregation === 'max' ? r.scoreMax : r.scoreMean;
      expect(compareGoldenScores(again, g)).toMatchObject({ ok: true, mismatches: [] });
      // The samples differ from one another, so a model that ignored its depth input would not pass.
      expect(new Set(golden.scores.map((x) => x.toFixed(6))).size).toBe(3);
    } finally {
      await d.release();
    }

    // What does not fit a depth model is refused, naming the field.
    await expect(assembleBundle(join(root, 'depth-no-depth'), { ...tiny, golden: { count: 3, scores: golden.scores } })).rejects.toThrow(
      /golden\.depthFile: is missing: a depth model takes depth/,
    );
    await expect(
      assembleBundle(join(root, 'depth-with-images'), { ...tiny, golden: { ...golden, images: new Uint8Array(3 * m.input.height * m.input.width * 3) } }),
    ).rejects.toThrow(/golden\.file: must be absent: a depth model takes no images/);
    const short = { depth: { ...depth.depth, data: depth.depth.data.subarray(1) }, mask: depth.mask };
    await expect(assembleBundle(join(root, 'depth-short'), { ...tiny, golden: { ...golden, depth: short } })).rejects.toThrow(
      /golden\.depthFile: "golden-depth\.bin" has \d+ bytes, 4 × 3 × \(\d+ × \d+ \+ \d+ × \d+\) = \d+ expected/,
    );
  });

  it('a golden.bin changed after loading is refused', async () => {
    const dir = join(root, 'with-golden');
    const loaded = await readBundle(dir);
    const bytes = await readFile(join(dir, 'golden.bin'));
    bytes[0] ^= 1;
    await writeFile(join(dir, 'golden.bin'), bytes);
    await expect(goldenSamplesFor(loaded)).rejects.toBeInstanceOf(BundleError);
  });
});
