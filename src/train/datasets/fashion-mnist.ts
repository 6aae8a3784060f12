/**
 * Fashion-MNIST (Zalando, MIT) from Debian's `dataset-fashion-mnist`, and one-class anomaly-detection trees
 * made from it: train on one class ("good"), test on all ten (the other nine are the "defects"). This is
 * the usual one-class protocol on (Fashion-)MNIST in the anomaly-detection literature; it is image-level only
 * (no masks). It gives the project real images when MVTec AD cannot be downloaded.
 */
import { readFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzip } from 'node:zlib';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { DatasetError, describeCause } from './errors.js';
import { mapLimit, writeTreeAtomically } from './fs-utils.js';

const gunzipAsync = promisify(gunzip);

export const FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';

/** The official label names, index = label. */
export const FASHION_MNIST_LABELS = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'] as const;

/** The same as folder names (lower case, no '/' or spaces): used for class folders and defect type folders. */
export const FASHION_MNIST_CLASSES = ['t-shirt_top', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'ankle_boot'] as const;
export type FashionMnistClass = (typeof FASHION_MNIST_CLASSES)[number];

export interface IdxArray {
  /** e.g. [60000, 28, 28] for images, [60000] for labels. */
  shape: number[];
  data: Uint8Array;
}

/**
 * Parses an IDX file (gzip-compressed or not): magic 0x00 0x00 <type> <ndim>, ndim big-endian uint32 sizes,
 * then the data. Only type 0x08 (unsigned byte) is supported — the only one (Fashion-)MNIST uses.
 */
export function parseIdx(bytes: Uint8Array, path: string): IdxArray {
  if (bytes.length < 4 || bytes[0] !== 0 || bytes[1] !== 0) throw new DatasetError('unreadable', path, `${path} is not an IDX file (bad magic number)`);
  if (bytes[2] !== 0x08) throw new DatasetError('unsupported', path, `${path}: IDX element type 0x${bytes[2]!.toString(16)} is not supported (only unsigned bytes)`);
  const ndim = bytes[3]!;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (ndim === 0 || bytes.length < 4 + 4 * ndim) throw new DatasetError('unreadable', path, `${path}: IDX header is truncated`);
  const shape = Array.from({ length: ndim }, (_, i) => dv.getUint32(4 + 4 * i, false));
  const count = shape.reduce((a, b) => a * b, 1);
  const start = 4 + 4 * ndim;
  if (bytes.length !== start + count) {
    throw new DatasetError('unreadable', path, `${path}: IDX header promises ${count} bytes of data (${shape.join('×')}), the file holds ${bytes.length - start} (truncated?)`);
  }
  return { shape, data: bytes.subarray(start) };
}

export async function readIdx(path: string): Promise<IdxArray> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (e) {
    const missing = (e as NodeJS.ErrnoException).code === 'ENOENT';
    throw new DatasetError(missing ? 'missing' : 'unreadable', path,
      missing ? `${path} does not exist${path.startsWith(FASHION_MNIST_DIR) ? ' (install the Debian package dataset-fashion-mnist, see deploy/setup.sh)' : ''}` : `cannot read ${path}: ${describeCause(e)}`,
      { cause: e });
  }
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = new Uint8Array(await gunzipAsync(bytes));
    } catch (e) {
      throw new DatasetError('unreadable', path, `${path}: gzip data is corrupt: ${describeCause(e)}`, { cause: e });
    }
  }
  return parseIdx(bytes, path);
}

export interface FashionMnistSplit {
  /** [count, 28, 28] uint8, 0 = background (black), 255 = ink. */
  images: Uint8Array;
  /** [count] in 0…9, index into {@link FASHION_MNIST_CLASSES}. */
  labels: Uint8Array;
  count: number;
  rows: number;
  cols: number;
}

/** One split: 'train' (60000 images) or 'test' (10000, the t10k files). */
export async function loadFashionMnist(split: 'train' | 'test', dir: string = FASHION_MNIST_DIR): Promise<FashionMnistSplit> {
  const prefix = split === 'train' ? 'train' : 't10k';
  const imagesPath = join(dir, `${prefix}-images-idx3-ubyte.gz`);
  const labelsPath = join(dir, `${prefix}-labels-idx1-ubyte.gz`);
  const [images, labels] = await Promise.all([readIdx(imagesPath), readIdx(labelsPath)]);
  if (images.shape.length !== 3) throw new DatasetError('unsupported', imagesPath, `${imagesPath}: expected a 3-d image array, got shape ${images.shape.join('×')}`);
  if (labels.shape.length !== 1 || labels.shape[0] !== images.shape[0]) {
    throw new DatasetError('unsupported', labelsPath, `${labelsPath}: ${labels.shape.join('×')} labels for ${images.shape[0]} images in ${imagesPath}`);
  }
  const bad = labels.data.findIndex((l) => l > 9);
  if (bad >= 0) throw new DatasetError('unsupported', labelsPath, `${labelsPath}: label ${labels.data[bad]} at index ${bad} is not a Fashion-MNIST class (0–9)`);
  return { images: images.data, labels: labels.data, count: images.shape[0]!, rows: images.shape[1]!, cols: images.shape[2]! };
}

/** Indices (in file order) of the images of one class, at most `limit`. */
export function indicesOfClass(split: FashionMnistSplit, label: number, limit = Infinity): number[] {
  const out: number[] = [];
  for (let i = 0; i < split.count && out.length < limit; i++) if (split.labels[i] === label) out.push(i);
  return out;
}

export function classIndex(goodClass: number | string): number {
  const i = typeof goodClass === 'number' ? goodClass : (FASHION_MNIST_CLASSES as readonly string[]).indexOf(goodClass);
  if (!Number.isInteger(i) || i < 0 || i > 9) {
    throw new DatasetError('invalid-option', String(goodClass), `unknown Fashion-MNIST class "${goodClass}": one of ${FASHION_MNIST_CLASSES.join(', ')} (or 0–9)`);
  }
  return i;
}

/**
 * Defaults, chosen so one class trains in minutes with the `edge` preset on 2 cores and all ten classes
 * fit in an evening, while the AUROC is still measured on enough images to compare AST with a baseline:
 * - 200 training images: the training benchmark size ("200 images … under 10 minutes"); more good
 *   images of a 28×28 class add little (the one-class literature reaches its plateau far below 6000).
 * - 100 test images per class → 100 good vs 900 anomalous. The standard error of an AUROC around 0.9 with
 *   100 positives/900 negatives is about 0.01, small enough for a per-class table; the full protocol
 *   (6000 train, 1000 test per class) is `trainLimit: Infinity, testPerClass: 1000`.
 * - size 28: the native resolution. Upsampling at write time adds no information and multiplies the
 *   files; the loader resizes to the model's input (e.g. 256² for `edge`) with the same kernel as any
 *   other dataset.
 */
export const FASHION_MNIST_DEFAULTS = { size: 28, trainLimit: 200, testPerClass: 100 } as const;

export interface OneClassOptions {
  /** The "good" class: a folder name from {@link FASHION_MNIST_CLASSES} or a label 0–9. */
  goodClass: number | string;
  /** Class folder to write (MVTec AD layout inside). Replaced atomically if it exists. */
  out: string;
  /** Edge length of the written PNGs (resized with the 'linear' kernel when ≠ 28). Default 28. */
  size?: number;
  /** Training images of the good class, first in file order. Default 200. */
  trainLimit?: number;
  /** Test images per class (the good class and each of the nine others), first in file order. Default 100. */
  testPerClass?: number;
  /** Folder with the IDX files; default {@link FASHION_MNIST_DIR}. */
  sourceDir?: string;
  /** Already loaded splits (to write ten classes without parsing 30 MB ten times). */
  data?: { train: FashionMnistSplit; test: FashionMnistSplit };
}

export interface OneClassSummary {
  root: string;
  goodClass: FashionMnistClass;
  size: number;
  train: number;
  testGood: number;
  /** Test images per anomalous class (folder name → count). */
  testDefect: Record<string, number>;
}

async function writeDigitPng(split: FashionMnistSplit, index: number, size: number, file: string): Promise<void> {
  const px = split.rows * split.cols;
  const pixels = split.images.subarray(index * px, (index + 1) * px);
  let img = sharp(pixels, { raw: { width: split.cols, height: split.rows, channels: 1 } });
  if (size !== split.cols || size !== split.rows) img = img.resize(size, size, { fit: 'fill', kernel: 'linear' });
  // 'b-w' keeps the PNG single-channel (sharp would otherwise write 3 identical channels).
  await img.toColourspace('b-w').png({ compressionLevel: 6 }).toFile(file);
}

/**
 * Writes one one-class dataset in the MVTec AD layout (image-level labels, no ground_truth/):
 *   out/train/good/<index>.png          good class, training split
 *   out/test/good/<index>.png           good class, test split
 *   out/test/<other class>/<index>.png  the nine other classes, test split
 * `<index>` is the image's index in its IDX file (6 digits), so every file can be traced to its source.
 */
export async function writeOneClassDataset(opts: OneClassOptions): Promise<OneClassSummary> {
  const good = classIndex(opts.goodClass);
  const size = opts.size ?? FASHION_MNIST_DEFAULTS.size;
  const trainLimit = opts.trainLimit ?? FASHION_MNIST_DEFAULTS.trainLimit;
  const testPerClass = opts.testPerClass ?? FASHION_MNIST_DEFAULTS.testPerClass;
  if (!Number.isInteger(size) || size < 1) throw new DatasetError('invalid-option', opts.out, `size must be a positive integer, got ${size}`);
  if (!(trainLimit >= 1) || !(testPerClass >= 1)) throw new DatasetError('invalid-option', opts.out, `trainLimit and testPerClass must be ≥ 1, got ${trainLimit} and ${testPerClass}`);
  const data = opts.data ?? { train: await loadFashionMnist('train', opts.sourceDir), test: await loadFashionMnist('test', opts.sourceDir) };
  const jobs: { split: FashionMnistSplit; index: number; rel: string }[] = [];
  for (const i of indicesOfClass(data.train, good, trainLimit)) jobs.push({ split: data.train, index: i, rel: join('train', 'good') });
  const testDefect: Record<string, number> = {};
  let testGood = 0;
  for (let c = 0; c < 10; c++) {
    const folder = c === good ? 'good' : FASHION_MNIST_CLASSES[c]!;
    const idx = indicesOfClass(data.test, c, testPerClass);
    if (c === good) testGood = idx.length;
    else testDefect[folder] = idx.length;
    for (const i of idx) jobs.push({ split: data.test, index: i, rel: join('test', folder) });
  }
  const root = await writeTreeAtomically(opts.out, async (staging) => {
    for (const rel of new Set(jobs.map((j) => j.rel))) await mkdir(join(staging, rel), { recursive: true });
    await mapLimit(jobs, 8, (j) => writeDigitPng(j.split, j.index, size, join(staging, j.rel, `${String(j.index).padStart(6, '0')}.png`)));
    return opts.out;
  });
  return { root, goodClass: FASHION_MNIST_CLASSES[good]!, size, train: jobs.filter((j) => j.split === data.train).length, testGood, testDefect };
}
