import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DatasetError, DEFECT_TYPES, FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, SKIMAGE_DATA_DIR, TEXTURES,
  decodeDepth, decodeMask, decodeRgb, deriveSeed, encodeTiff, loadDataset, loadFashionMnist, loadTexture, makePart,
  makeTrainCrop, requireSplit, textureRegions, writeOneClassDataset, writeTextureDataset,
  type Dataset, type FashionMnistSplit,
} from '../src/train/datasets/index.js';

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'ast-datasets-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** Writes a PNG from raw 8-bit pixels (channels 1 = grey, 2 = grey+alpha, 3 = RGB, 4 = RGBA). */
async function png(path: string, width: number, height: number, channels: 1 | 2 | 3 | 4, pixels?: Uint8Array): Promise<string> {
  await mkdir(dirname(path), { recursive: true });
  const data = pixels ?? new Uint8Array(width * height * channels).map((_, i) => (i * 37) % 256);
  let img = sharp(data, { raw: { width, height, channels } });
  if (channels <= 2) img = img.toColourspace('b-w'); // else sharp writes 3 identical channels
  await img.png().toFile(path);
  return path;
}

/** Expects `p` to reject with a DatasetError of `code` whose message contains `path`. */
async function expectDatasetError(p: Promise<unknown>, code: DatasetError['code'], path: string): Promise<DatasetError> {
  const e = await p.then(() => null, (err: unknown) => err);
  expect(e, `expected a DatasetError (${code}) about ${path}`).toBeInstanceOf(DatasetError);
  const de = e as DatasetError;
  expect(de.code).toBe(code);
  expect(de.path).toBe(path);
  expect(de.message).toContain(path);
  return de;
}

const ids = (s: { id: string }[]): string[] => s.map((x) => x.id);

describe('dataset layouts', () => {
  it('discovers an MVTec AD class (multi-class root, --class, root = class folder), sorted', async () => {
    const root = join(tmp, 'mvtec');
    const c = join(root, 'bottle');
    for (const n of ['010', '002', '1']) await png(join(c, 'train/good', `${n}.png`), 8, 8, 3);
    await png(join(c, 'test/good/000.png'), 8, 8, 3);
    for (const n of ['001', '000']) {
      await png(join(c, 'test/broken_large', `${n}.png`), 8, 8, 3);
      await png(join(c, 'ground_truth/broken_large', `${n}_mask.png`), 8, 8, 1);
    }
    await png(join(root, 'cable/train/good/000.png'), 8, 8, 3);
    await writeFile(join(root, 'license.txt'), 'CC BY-NC-SA 4.0'); // MVTec's root files are not classes
    await writeFile(join(c, 'train/good/.DS_Store'), 'x');

    const ds = await loadDataset(root, { className: 'bottle' });
    expect(ds).toMatchObject({ root: c, name: 'bottle', layout: 'mvtec' });
    expect(ds.validation).toBeUndefined();
    expect(ids(ds.train)).toEqual(['train/good/002', 'train/good/010', 'train/good/1']);
    expect(ds.train.every((s) => s.label === 'good' && s.defectType === 'good' && !s.mask)).toBe(true);
    expect(ds.test).toEqual([
      { id: 'test/broken_large/000', image: join(c, 'test/broken_large/000.png'), mask: join(c, 'ground_truth/broken_large/000_mask.png'), label: 'defect', defectType: 'broken_large' },
      { id: 'test/broken_large/001', image: join(c, 'test/broken_large/001.png'), mask: join(c, 'ground_truth/broken_large/001_mask.png'), label: 'defect', defectType: 'broken_large' },
      { id: 'test/good/000', image: join(c, 'test/good/000.png'), label: 'good', defectType: 'good' },
    ]);
    expect(await loadDataset(c, {})).toEqual(ds); // the root itself may be the class folder
    await expectDatasetError(loadDataset(root, {}), 'layout', root); // two classes: --class needed
    const missing = await expectDatasetError(loadDataset(root, { className: 'screw' }), 'missing', join(root, 'screw'));
    expect(missing.message).toContain('bottle, cable');
  });

  it('discovers an MVTec 3D-AD class with validation, depth and gt', async () => {
    const c = join(tmp, 'mvtec3d', 'cookie');
    const tiff = encodeTiff({ width: 4, height: 4, channels: 3, data: new Float32Array(48).fill(0.5) });
    const put = async (split: string, type: string, n: string, gt: boolean): Promise<void> => {
      await png(join(c, split, type, 'rgb', `${n}.png`), 4, 4, 3);
      await mkdir(join(c, split, type, 'xyz'), { recursive: true });
      await writeFile(join(c, split, type, 'xyz', `${n}.tiff`), tiff);
      if (gt) await png(join(c, split, type, 'gt', `${n}.png`), 4, 4, 1);
    };
    await put('train', 'good', '000', true);
    await put('train', 'good', '001', true);
    await put('validation', 'good', '000', true);
    await put('test', 'good', '000', true);
    await put('test', 'crack', '000', true);
    await put('test', 'crack', '001', true);
    await mkdir(join(c, 'calibration'), { recursive: true }); // MVTec 3D-AD ships camera parameters here

    const ds = await loadDataset(join(tmp, 'mvtec3d'), { className: 'cookie' });
    expect(ds.layout).toBe('mvtec3d');
    expect(ids(ds.train)).toEqual(['train/good/000', 'train/good/001']);
    expect(ids(ds.validation!)).toEqual(['validation/good/000']);
    expect(ids(ds.test)).toEqual(['test/crack/000', 'test/crack/001', 'test/good/000']);
    expect(ds.test[0]).toEqual({
      id: 'test/crack/000', label: 'defect', defectType: 'crack',
      image: join(c, 'test/crack/rgb/000.png'), depth: join(c, 'test/crack/xyz/000.tiff'), mask: join(c, 'test/crack/gt/000.png'),
    });
    expect(ds.test[2]!.mask).toBeUndefined();

    // a missing depth partner, then a missing mask, are named
    await rm(join(c, 'test/crack/xyz/001.tiff'));
    await expectDatasetError(loadDataset(c, {}), 'missing', join(c, 'test/crack/xyz/001.tiff'));
    await writeFile(join(c, 'test/crack/xyz/001.tiff'), tiff);
    await rm(join(c, 'test/crack/gt/001.png'));
    await expectDatasetError(loadDataset(c, {}), 'missing-mask', join(c, 'test/crack/gt/001.png'));
  });

  it('discovers a plain folder of good images, with optional labelled sub-folders', async () => {
    const f = join(tmp, 'folder');
    await png(join(f, 'b.png'), 5, 5, 1);
    await png(join(f, 'a.png'), 5, 5, 3);
    let ds = await loadDataset(f, {});
    expect(ds.layout).toBe('folder');
    expect(ids(ds.train)).toEqual(['a', 'b']);
    expect(ds.test).toEqual([]);
    expect(() => requireSplit(ds, 'test')).toThrow(DatasetError);
    await png(join(f, 'good/g1.png'), 5, 5, 3);
    await png(join(f, 'dent/d1.png'), 5, 5, 3);
    ds = await loadDataset(f, { layout: 'folder' });
    expect(ds.test.map((s) => [s.id, s.label, s.defectType])).toEqual([['dent/d1', 'defect', 'dent'], ['good/g1', 'good', 'good']]);
    expect(ds.test.every((s) => !s.mask)).toBe(true); // no ground_truth/: image-level labels only
    requireSplit(ds, 'train');
  });

  it('names the folder or file at fault', async () => {
    const nowhere = join(tmp, 'does-not-exist');
    await expectDatasetError(loadDataset(nowhere, {}), 'missing', nowhere);

    const c = join(tmp, 'broken', 'screw');
    await mkdir(join(c, 'train/good'), { recursive: true });
    await writeFile(join(c, 'train/good/notes.txt'), 'no images here');
    const empty = await expectDatasetError(loadDataset(c, {}), 'empty', join(c, 'train/good'));
    expect(empty.message).toContain('notes.txt');

    await png(join(c, 'train/good/000.png'), 8, 8, 3);
    await writeFile(join(c, 'train/good/001.png'), 'this is not a PNG');
    await expectDatasetError(loadDataset(c, {}), 'unreadable', join(c, 'train/good/001.png'));
    await writeFile(join(c, 'train/good/001.png'), '');
    await expectDatasetError(loadDataset(c, { verify: false }), 'unreadable', join(c, 'train/good/001.png')); // 0 bytes
    await rm(join(c, 'train/good/001.png'));

    await png(join(c, 'test/scratch/000.png'), 8, 8, 3);
    await png(join(c, 'test/scratch/001.png'), 8, 8, 3);
    await png(join(c, 'ground_truth/scratch/000_mask.png'), 8, 8, 1);
    await expectDatasetError(loadDataset(c, {}), 'missing-mask', join(c, 'ground_truth/scratch/001_mask.png'));
    await png(join(c, 'ground_truth/scratch/001_mask.png'), 8, 8, 1);
    expect((await loadDataset(c, {})).test).toHaveLength(2);

    await png(join(c, 'train/scratch/000.png'), 8, 8, 3); // defects in train/ are refused
    await expectDatasetError(loadDataset(c, {}), 'layout', join(c, 'train/scratch'));
    await rm(join(c, 'train/scratch'), { recursive: true });

    const testOnly: Dataset = { ...(await loadDataset(c, {})), train: [] };
    expect(() => requireSplit(testOnly, 'train')).toThrow(join(c, 'train', 'good'));
  });
});

describe('decoding', () => {
  it('decodes RGB exactly at native size; grey replicated, alpha dropped; resizes with the stated kernel', async () => {
    const rgb = new Uint8Array(6 * 4 * 3).map((_, i) => (i * 53 + 7) % 256);
    expect(await decodeRgb(await png(join(tmp, 'd/rgb.png'), 6, 4, 3, rgb), { width: 6, height: 4 })).toEqual(rgb);

    const grey = new Uint8Array(6 * 4).map((_, i) => i * 10);
    const g = await decodeRgb(await png(join(tmp, 'd/grey.png'), 6, 4, 1, grey), { width: 6, height: 4 });
    expect(g).toEqual(new Uint8Array(72).map((_, i) => grey[Math.floor(i / 3)]!));

    const rgba = new Uint8Array(6 * 4 * 4).map((_, i) => (i % 4 === 3 ? (i * 7) % 256 : (i * 13) % 256));
    const a = await decodeRgb(await png(join(tmp, 'd/rgba.png'), 6, 4, 4, rgba), { width: 6, height: 4 });
    expect(a).toEqual(new Uint8Array(72).map((_, i) => rgba[Math.floor(i / 3) * 4 + (i % 3)]!));
    const ga = await decodeRgb(await png(join(tmp, 'd/ga.png'), 6, 4, 2, new Uint8Array(48).map((_, i) => (i % 2 ? 0 : i * 5))), { width: 6, height: 4 });
    expect(ga).toEqual(new Uint8Array(72).map((_, i) => Math.floor(i / 3) * 10));

    // 16-bit RGB scales to 8 bits (65535 → 255)
    const p16 = join(tmp, 'd/rgb16.png');
    await sharp(new Uint16Array([0, 257, 65535, 32896, 1028, 65535]), { raw: { width: 2, height: 1, channels: 3 } }).toColourspace('rgb16').png().toFile(p16);
    expect(Array.from(await decodeRgb(p16, { width: 2, height: 1 }))).toEqual([0, 1, 255, 128, 4, 255]);

    // 'linear' (antialiased triangle) halving a column pattern: a weighted mean, not a pick
    const cols = new Uint8Array(8 * 8).map((_, i) => (i % 2 ? 200 : 0));
    const half = await decodeRgb(await png(join(tmp, 'd/cols.png'), 8, 8, 1, cols), { width: 4, height: 4 });
    expect(half).toHaveLength(48);
    expect(Math.min(...half)).toBeGreaterThan(50);
    expect(Math.max(...half)).toBeLessThan(150);
    const nearest = await decodeRgb(join(tmp, 'd/cols.png'), { width: 4, height: 4 }, { kernel: 'nearest' });
    expect(new Set(nearest).size).toBe(1);
  });

  it('decodes masks to 0/1 with nearest resizing (grey, red-on-black)', async () => {
    const m = new Uint8Array(8 * 8).map((_, i) => (i % 8 >= 4 && Math.floor(i / 8) < 4 ? 255 : 0));
    const p = await png(join(tmp, 'd/mask.png'), 8, 8, 1, m);
    expect(await decodeMask(p, { width: 8, height: 8 })).toEqual(m.map((v) => (v ? 1 : 0)));
    expect(Array.from(await decodeMask(p, { width: 2, height: 2 }))).toEqual([0, 1, 0, 0]);
    const up = await decodeMask(p, { width: 16, height: 16 });
    expect(new Set(up)).toEqual(new Set([0, 1]));
    expect(up.reduce((s, v) => s + v, 0)).toBe(64); // a quarter, no blurred border
    // the authors' protocol: bilinear (align_corners=False) then > 0 — any touched source pixel counts
    const dot = new Uint8Array(16);
    dot[1 * 4 + 1] = 255;
    const pd = await png(join(tmp, 'd/dot.png'), 4, 4, 1, dot);
    expect(Array.from(await decodeMask(pd, { width: 2, height: 2 }, { resample: 'reference' }))).toEqual([1, 0, 0, 0]);
    expect(Array.from(await decodeMask(pd, { width: 4, height: 4 }, { resample: 'reference' }))).toEqual(Array.from(dot, (v) => (v ? 1 : 0)));
    const up8 = await decodeMask(pd, { width: 8, height: 8 }, { resample: 'reference' });
    expect(up8.reduce((s, v) => s + v, 0)).toBe(16); // rows/cols 1–4 interpolate from source row/col 1
    const red = new Uint8Array(4 * 3).map((_, i) => (i === 3 ? 255 : 0));
    expect(Array.from(await decodeMask(await png(join(tmp, 'd/red.png'), 4, 1, 3, red), { width: 4, height: 1 }))).toEqual([0, 1, 0, 0]);
  });

  it('decodes 16-bit PNG depth exactly (mm → m by default, unit option)', async () => {
    const v = new Uint16Array([0, 1, 2, 999, 1000, 1234, 32768, 65535, 4321, 0, 7, 60000]);
    const p = join(tmp, 'd/depth16.png');
    await sharp(v, { raw: { width: 4, height: 3, channels: 1 } }).toColourspace('grey16').png().toFile(p);
    const d = await decodeDepth(p);
    expect([d.width, d.height]).toEqual([4, 3]);
    expect(Array.from(d.z)).toEqual(Array.from(v, (x) => Math.fround(x * 0.001)));
    expect(Array.from((await decodeDepth(p, { unitMetres: 1e-4 })).z)).toEqual(Array.from(v, (x) => Math.fround(x * 1e-4)));
    // an 8-bit PNG cannot be depth
    await expectDatasetError(decodeDepth(await png(join(tmp, 'd/depth8.png'), 4, 3, 1)), 'unsupported', join(tmp, 'd/depth8.png'));
  });

  it('decodes float TIFF z exactly: 3-channel xyz (RGB or MinIsBlack, raw or deflate) and 1-channel', async () => {
    const [w, h] = [5, 3];
    const xyz = new Float32Array(w * h * 3).map((_, i) => (i % 3 === 2 ? 0.6 + i * 1.2345e-4 : i * 0.0123 - 0.3));
    xyz[2] = 0; // a missing point
    xyz[5] = Number.NaN; // another writer's gap marker → 0
    const z = Array.from({ length: w * h }, (_, i) => (Number.isNaN(xyz[3 * i + 2]) ? 0 : xyz[3 * i + 2]!));
    const cases: [string, Uint8Array][] = [
      ['rgb.tiff', encodeTiff({ width: w, height: h, channels: 3, data: xyz })],
      ['minisblack.tiff', encodeTiff({ width: w, height: h, channels: 3, data: xyz, photometric: 'minisblack' })],
      ['planar.tiff', encodeTiff({ width: w, height: h, channels: 3, data: xyz, planar: true })],
      ['minisblack-planar.tiff', encodeTiff({ width: w, height: h, channels: 3, data: xyz, photometric: 'minisblack', planar: true })], // sharp mixes planes here
      ['planar-deflate.tiff', encodeTiff({ width: w, height: h, channels: 3, data: xyz, planar: true, compression: 'deflate' })], // through sharp
      ['rgb-deflate.tiff', encodeTiff({ width: w, height: h, channels: 3, data: xyz, compression: 'deflate' })], // through sharp
      ['z.tiff', encodeTiff({ width: w, height: h, channels: 1, data: Float32Array.from(z) })],
      ['z-deflate.tiff', encodeTiff({ width: w, height: h, channels: 1, data: Float32Array.from(z), compression: 'deflate' })],
    ];
    for (const [name, bytes] of cases) {
      const p = join(tmp, 'd', name);
      await writeFile(p, bytes);
      const d = await decodeDepth(p);
      expect([d.width, d.height], name).toEqual([w, h]);
      expect(Array.from(d.z), name).toEqual(z);
    }
    // uint16 TIFF depth (mm) too
    const u = new Uint16Array([0, 500, 65535, 12]);
    await writeFile(join(tmp, 'd/u16.tiff'), encodeTiff({ width: 2, height: 2, channels: 1, data: u }));
    expect(Array.from((await decodeDepth(join(tmp, 'd/u16.tiff'))).z)).toEqual(Array.from(u, (x) => Math.fround(x * 0.001)));
  });

  it('documents what sharp alone does with these files (why decode.ts routes them)', async () => {
    const xyz = new Float32Array(2 * 1 * 3).map((_, i) => i * 0.1 - 0.2);
    const tiff = encodeTiff({ width: 2, height: 1, channels: 3, data: xyz });
    const plain = await sharp(tiff).raw({ depth: 'float' }).toBuffer();
    expect(Array.from(new Float32Array(new Uint8Array(plain).buffer))).not.toEqual(Array.from(xyz)); // scRGB → sRGB conversion
    const routed = await sharp(tiff).toColourspace('scrgb').raw({ depth: 'float' }).toBuffer();
    expect(Array.from(new Float32Array(new Uint8Array(routed).buffer))).toEqual(Array.from(xyz));
    const p16 = await sharp(new Uint16Array([1000, 2000]), { raw: { width: 2, height: 1, channels: 1 } }).toColourspace('grey16').png().toBuffer();
    expect((await sharp(p16).raw().toBuffer({ resolveWithObject: true })).info.channels).toBe(3); // plain raw() is 8-bit sRGB
  });

  it('names corrupt, truncated and missing files', async () => {
    const bad = join(tmp, 'd/bad.png');
    await writeFile(bad, 'not an image at all');
    await expectDatasetError(decodeRgb(bad, { width: 4, height: 4 }), 'unreadable', bad);
    await expectDatasetError(decodeMask(bad, { width: 4, height: 4 }), 'unreadable', bad);
    await expectDatasetError(decodeDepth(bad), 'unreadable', bad);
    const full = await sharp(new Uint8Array(64 * 64 * 3).map((_, i) => (i * 31) % 256), { raw: { width: 64, height: 64, channels: 3 } }).png().toBuffer();
    const cut = join(tmp, 'd/cut.png');
    await writeFile(cut, full.subarray(0, Math.floor(full.length * 0.6)));
    await expectDatasetError(decodeRgb(cut, { width: 64, height: 64 }), 'unreadable', cut);
    const tiff = encodeTiff({ width: 8, height: 8, channels: 3, data: new Float32Array(192) });
    const cutTiff = join(tmp, 'd/cut.tiff');
    await writeFile(cutTiff, tiff.subarray(0, tiff.length - 100));
    await expectDatasetError(decodeDepth(cutTiff), 'unreadable', cutTiff);
    const none = join(tmp, 'd/none.png');
    await expectDatasetError(decodeRgb(none, { width: 4, height: 4 }), 'missing', none);
    await expectDatasetError(decodeDepth(none), 'missing', none);
  });
});

describe.skipIf(!existsSync(join(FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz')))('Fashion-MNIST', () => {
  let train: FashionMnistSplit;
  let test: FashionMnistSplit;
  beforeAll(async () => {
    [train, test] = await Promise.all([loadFashionMnist('train'), loadFashionMnist('test')]);
  });

  it('reads the Debian IDX files: 60000 + 10000 images of 28×28, labels 0–9 balanced, pixels 0…255', () => {
    expect([train.count, train.rows, train.cols, train.images.length]).toEqual([60000, 28, 28, 60000 * 784]);
    expect([test.count, test.images.length]).toEqual([10000, 10000 * 784]);
    for (const [split, per] of [[train, 6000], [test, 1000]] as const) {
      const counts = new Array(10).fill(0);
      for (const l of split.labels) counts[l]++;
      expect(counts).toEqual(new Array(10).fill(per));
    }
    let min = 255, max = 0;
    for (const v of test.images) { if (v < min) min = v; if (v > max) max = v; }
    expect([min, max]).toEqual([0, 255]);
    // the first test image is an ankle boot, the first training image too (a known property of the files)
    expect([FASHION_MNIST_CLASSES[test.labels[0]!], FASHION_MNIST_CLASSES[train.labels[0]!]]).toEqual(['ankle_boot', 'ankle_boot']);
    // the usual normalisation constants of Fashion-MNIST: training-set mean 0.2860, std 0.3530 (of 255)
    let sum = 0, sq = 0;
    for (const v of train.images) { sum += v; sq += v * v; }
    const mean = sum / train.images.length;
    expect(mean / 255).toBeCloseTo(0.286, 3);
    expect(Math.sqrt(sq / train.images.length - mean * mean) / 255).toBeCloseTo(0.353, 3);
  });

  it('writes a one-class tree in the MVTec layout that loads and decodes back to the source pixels', async () => {
    const out = join(tmp, 'fmnist', 'trouser');
    const s = await writeOneClassDataset({ goodClass: 'trouser', out, trainLimit: 5, testPerClass: 2, data: { train, test } });
    expect(s).toMatchObject({ goodClass: 'trouser', train: 5, testGood: 2, size: 28 });
    expect(Object.keys(s.testDefect)).toEqual(FASHION_MNIST_CLASSES.filter((c) => c !== 'trouser'));
    const ds = await loadDataset(join(tmp, 'fmnist'), { className: 'trouser' });
    expect([ds.layout, ds.train.length, ds.test.length]).toEqual(['mvtec', 5, 20]);
    expect(ds.test.filter((x) => x.label === 'good')).toHaveLength(2);
    expect(ds.test.every((x) => !x.mask)).toBe(true);
    const first = ds.train[0]!;
    const index = Number(first.id.split('/').pop());
    expect(train.labels[index]).toBe(1);
    const rgb = await decodeRgb(first.image!, { width: 28, height: 28 });
    expect(Array.from(rgb.filter((_, i) => i % 3 === 0))).toEqual(Array.from(train.images.subarray(index * 784, index * 784 + 784)));
  });
});

describe.skipIf(!existsSync(join(SKIMAGE_DATA_DIR, 'brick.png')))('synthetic texture defects', () => {
  it('makes visible defects of a few % whose mask is exactly the changed pixels', async () => {
    const size = 128;
    for (const name of TEXTURES) {
      const texture = await loadTexture(name);
      for (const type of DEFECT_TYPES) {
        for (const seed of [1, 2, 3]) {
          const good = makePart({ texture, size, defect: null, seed });
          const bad = makePart({ texture, size, defect: type, seed });
          expect(good.mask).toBeNull();
          expect(bad.crop).toEqual(good.crop);
          const mask = bad.mask!;
          const area = mask.reduce((s, v) => s + v, 0) / mask.length;
          const tag = `${name}/${type}/${seed}`;
          expect(area, tag).toBeGreaterThan(0.003);
          expect(area, tag).toBeLessThan(0.08);
          expect(bad.defect).toMatchObject({ type, area });
          let inside = 0, changed = 0, outsideDiff = 0;
          for (let i = 0; i < mask.length; i++) {
            let d = 0;
            for (let k = 0; k < 3; k++) d += Math.abs(bad.rgb[3 * i + k]! - good.rgb[3 * i + k]!);
            if (mask[i]) {
              inside += d / 3;
              if (d / 3 > 8) changed++;
            } else outsideDiff += d;
          }
          const n = mask.reduce((s, v) => s + v, 0);
          expect(outsideDiff, tag).toBe(0);
          expect(inside / n, tag).toBeGreaterThan(20); // mean |Δ| over the defect, grey levels
          expect(changed / n, tag).toBeGreaterThan(0.6);
        }
      }
    }
  });

  it('is deterministic by seed and keeps training and test crops in disjoint regions', async () => {
    const texture = await loadTexture('gravel');
    const a = makePart({ texture, size: 64, defect: 'scratch', seed: 42 });
    expect(makePart({ texture, size: 64, defect: 'scratch', seed: 42 })).toEqual(a);
    expect(makePart({ texture, size: 64, defect: 'scratch', seed: 43 }).rgb).not.toEqual(a.rgb);
    const { train, test } = textureRegions(texture);
    expect(train.y1).toBeLessThanOrEqual(test.y0);
    for (let seed = 0; seed < 50; seed++) {
      const t = makeTrainCrop({ texture, size: 100, seed });
      expect(t.crop.y + 100).toBeLessThanOrEqual(train.y1);
      expect(makePart({ texture, size: 100, seed }).crop.y).toBeGreaterThanOrEqual(test.y0);
    }
    expect(() => makePart({ texture, size: 300, seed: 1 })).toThrow(DatasetError);

    const opts = { texture: 'brick', size: 64, trainCount: 4, testGoodCount: 2, testDefectCount: 1, seed: 7 } as const;
    const out1 = join(tmp, 'tex1', 'brick');
    const out2 = join(tmp, 'tex2', 'brick');
    const s = await writeTextureDataset({ ...opts, out: out1 });
    await writeTextureDataset({ ...opts, out: out2 });
    expect(s.testDefect).toEqual({ scratch: 1, spot: 1, cut: 1, color: 1 });
    const ds = await loadDataset(out1, {});
    expect([ds.train.length, ds.test.length, ds.test.filter((x) => x.mask).length]).toEqual([4, 6, 4]);
    for (const sample of [...ds.train, ...ds.test]) {
      const rel = sample.image!.slice(out1.length);
      expect(await readFile(join(out2, rel)), rel).toEqual(await readFile(sample.image!));
    }
    const gen = JSON.parse(await readFile(join(out1, 'generation.json'), 'utf8')) as { images: { file: string; crop: { y: number } }[] };
    for (const img of gen.images) {
      if (img.file.startsWith('train/')) expect(img.crop.y + 64).toBeLessThanOrEqual(256);
      else expect(img.crop.y).toBeGreaterThanOrEqual(256);
    }
    // the written mask is the generator's mask
    const scratch = ds.test.find((x) => x.defectType === 'scratch')!;
    const part = makePart({ texture: await loadTexture('brick'), size: 64, defect: 'scratch', seed: deriveSeed(7, 'brick', 'test', 'scratch', 0) });
    expect(await decodeMask(scratch.mask!, { width: 64, height: 64 })).toEqual(part.mask);
    expect(await decodeRgb(scratch.image!, { width: 64, height: 64 })).toEqual(part.rgb);
  });
});
