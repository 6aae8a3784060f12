/**
 * Image, mask and depth decoding for training and evaluation, with sharp (libvips).
 *
 * What sharp does with our inputs (checked in test/datasets.test.ts):
 * - 8-bit grey, grey+alpha, RGB, RGBA, palette and 16-bit PNGs all come out as 8-bit RGB with
 *   `removeAlpha().toColourspace('srgb')` (grey replicated, 16-bit scaled by 255/65535).
 * - A 16-bit grey PNG comes back exactly only with `toColourspace('grey16').raw({ depth: 'ushort' })`;
 *   a plain `.raw()` converts it to 8-bit sRGB.
 * - A float TIFF with photometric RGB (MVTec 3D-AD xyz, tifffile's default for (H, W, 3)) is loaded as scRGB
 *   and converted to sRGB unless the output colourspace is 'scrgb'; with `toColourspace('scrgb')` and
 *   `raw({ depth: 'float' })` the values are exact. Float TIFFs with photometric MinIsBlack and 3 samples
 *   warn (refused under sharp's default failOn), become 5 bands, and are mis-read with separate planes:
 *   uncompressed TIFFs are therefore read by our own strip reader (tiff.ts), sharp only handles the
 *   compressed ones on the two routes that are exact (RGB float → scRGB, 1-sample float → b-w).
 * - sharp cannot *write* a float TIFF faithfully from raw floats (it colour-converts on the way), so the
 *   tests and generators write TIFFs with tiff.ts.
 */
import { readFile } from 'node:fs/promises';
import sharp from 'sharp';
import { DatasetError, describeCause } from './errors.js';
import { canReadUncompressed, isTiff, readTiffInfo, readUncompressedTiff, type TiffInfo } from './tiff.js';

export interface Size {
  width: number;
  height: number;
}

/** sharp's resampling kernels. */
export type ResizeKernel = 'nearest' | 'linear' | 'cubic' | 'mitchell' | 'lanczos2' | 'lanczos3';

/**
 * Default kernel for images: 'linear' — an antialiased triangle filter, which is what the authors' data
 * loader uses (torchvision `Resize` on PIL images = PIL bilinear, antialiased when shrinking), so features
 * of our training images match theirs as closely as a different library allows. (sharp's own default,
 * lanczos3, sharpens edges and textures noticeably at 1024 → 256.)
 */
export const DEFAULT_RESIZE_KERNEL: ResizeKernel = 'linear';

/**
 * Default depth unit for 16-bit images: 1 step = 1 mm, the convention of RealSense, Azure Kinect, Orbbec and
 * most RGB-D SDKs when they save depth as 16-bit PNG. AST's depth preparation works in metres (its
 * foreground threshold is 7e-3 m), so steps are multiplied by this.
 */
export const DEFAULT_DEPTH_UNIT_METRES = 0.001;

/** A depth (z) map, row-major [H, W], metres, 0 = missing. */
export interface DepthMap {
  z: Float32Array;
  width: number;
  height: number;
}

function checkSize(size: Size, path: string): void {
  if (!Number.isInteger(size.width) || !Number.isInteger(size.height) || size.width <= 0 || size.height <= 0) {
    throw new DatasetError('invalid-option', path, `decode ${path}: size must be positive integers, got ${size.width}×${size.height}`);
  }
}

/** Wraps sharp's errors ("Input file is missing", "unsupported image format", libpng errors) with the path. */
function sharpError(path: string, e: unknown): DatasetError {
  if (e instanceof DatasetError) return e;
  const msg = describeCause(e);
  if (/Input file is missing/i.test(msg)) return new DatasetError('missing', path, `${path} does not exist`, { cause: e });
  return new DatasetError('unreadable', path, `cannot decode ${path}: ${msg}`, { cause: e });
}

/**
 * Decodes an image as 8-bit RGB, HWC, resized to `size` (aspect ratio not kept — like the authors' Resize
 * to a square, parts are framed by the camera setup, not by us). Grey is replicated to three channels,
 * alpha is dropped (not composited: inspection images have no meaningful transparency), embedded ICC
 * profiles are converted to sRGB. Resampling happens in the encoded (gamma) space, as in PIL.
 * EXIF orientation is not applied (PIL does not either; industrial cameras do not set it).
 */
export async function decodeRgb(path: string, size: Size, opts: { kernel?: ResizeKernel } = {}): Promise<Uint8Array> {
  checkSize(size, path);
  try {
    const { data, info } = await sharp(path)
      .removeAlpha()
      .toColourspace('srgb')
      // fastShrinkOnLoad off: JPEG DCT shrinking would make the result depend on the file format.
      .resize(size.width, size.height, { fit: 'fill', kernel: opts.kernel ?? DEFAULT_RESIZE_KERNEL, fastShrinkOnLoad: false })
      .raw()
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3 || info.width !== size.width || info.height !== size.height) {
      throw new DatasetError('unsupported', path, `${path}: decoded to ${info.width}×${info.height}×${info.channels}, expected ${size.width}×${size.height}×3`);
    }
    return new Uint8Array(data.buffer, data.byteOffset, data.length);
  } catch (e) {
    throw sharpError(path, e);
  }
}

export type MaskResample = 'nearest' | 'reference';

/**
 * Decodes a ground-truth mask as 0/1, [H, W].
 * - `resample: 'nearest'` (default): nearest-neighbour resize (no new grey levels, no blurred border); a
 *   pixel is defective when any colour channel is ≥ 128. MVTec masks are 0/255 (exact there),
 *   anti-aliased or lossy masks are not inflated, red-on-black annotation masks also work (their luminance
 *   would be only 54).
 * - `resample: 'reference'`: what the authors' evaluation does (utils.py `DefectDataset.transform`):
 *   F.interpolate bilinear, align_corners=False, no antialias, then `> 0` — a pixel is defective when any
 *   of the (up to 2×2) source pixels it interpolates from is non-zero. Masks grow by up to a pixel; use it
 *   to compare pixel AUROC with the paper.
 */
export async function decodeMask(path: string, size: Size, opts: { resample?: MaskResample } = {}): Promise<Uint8Array> {
  checkSize(size, path);
  const reference = opts.resample === 'reference';
  try {
    let img = sharp(path).removeAlpha().toColourspace('srgb');
    if (!reference) img = img.resize(size.width, size.height, { fit: 'fill', kernel: 'nearest', fastShrinkOnLoad: false });
    const { data, info } = await img.raw().toBuffer({ resolveWithObject: true });
    const c = info.channels;
    const native = new Uint8Array(info.width * info.height);
    for (let i = 0; i < native.length; i++) {
      let m = 0;
      for (let k = 0; k < c; k++) m = Math.max(m, data[i * c + k]!);
      native[i] = reference ? (m > 0 ? 1 : 0) : m >= 128 ? 1 : 0;
    }
    return reference ? bilinearAny(native, info.width, info.height, size) : native;
  } catch (e) {
    throw sharpError(path, e);
  }
}

/** PyTorch's bilinear (align_corners=False, no antialias) followed by `> 0`, on a 0/1 mask. */
function bilinearAny(src: Uint8Array, w: number, h: number, size: Size): Uint8Array {
  const taps = (n: number, from: number): [number, number][] => {
    // For each output index: the source indices with a non-zero bilinear weight (PyTorch's index arithmetic).
    const scale = from / n;
    return Array.from({ length: n }, (_, i) => {
      const x = Math.max(0, (i + 0.5) * scale - 0.5);
      const x0 = Math.min(Math.floor(x), from - 1);
      const x1 = Math.min(x0 + 1, from - 1);
      const frac = x - x0;
      return frac > 0 ? [x0, x1] : [x0, x0];
    });
  };
  const ys = taps(size.height, h);
  const xs = taps(size.width, w);
  const out = new Uint8Array(size.width * size.height);
  for (let i = 0; i < size.height; i++) {
    const [y0, y1] = ys[i]!;
    for (let j = 0; j < size.width; j++) {
      const [x0, x1] = xs[j]!;
      out[i * size.width + j] = src[y0 * w + x0]! | src[y0 * w + x1]! | src[y1 * w + x0]! | src[y1 * w + x1]!;
    }
  }
  return out;
}

/** Copies a raw sharp buffer into a typed array of the given element type (sharp's buffers need not be aligned). */
function typedCopy<T extends Float32Array | Uint16Array>(data: Buffer, Ctor: { new (b: ArrayBuffer): T }): T {
  const copy = new Uint8Array(data.length);
  copy.set(data);
  return new Ctor(copy.buffer);
}

export interface DecodeDepthOptions {
  /**
   * Metres per step of a 16-bit (integer) depth image: default {@link DEFAULT_DEPTH_UNIT_METRES} (mm).
   * Float TIFFs are taken as metres and not scaled (MVTec 3D-AD's xyz files are in metres).
   */
  unitMetres?: number;
}

/** z from interleaved samples: 1 sample → itself, 3 samples (x, y, z) → the last. Non-finite → 0 (missing). */
function zFrom(samples: ArrayLike<number>, channels: number, width: number, height: number, scale: number, path: string): DepthMap {
  if (channels !== 1 && channels !== 3) {
    throw new DatasetError('unsupported', path, `${path}: depth images need 1 channel (z) or 3 (x, y, z), this one has ${channels}`);
  }
  const z = new Float32Array(width * height);
  for (let i = 0; i < z.length; i++) {
    const v = samples[i * channels + channels - 1]! * scale;
    // MVTec marks gaps with 0; NaN/Inf (other writers' gap marker) become gaps too, so one convention reaches depth.ts.
    z[i] = Number.isFinite(v) ? v : 0;
  }
  return { z, width, height };
}

async function depthFromTiff(bytes: Uint8Array, path: string, unit: number): Promise<DepthMap> {
  const info: TiffInfo | null = readTiffInfo(bytes, path);
  if (info && canReadUncompressed(info)) {
    if (info.sampleFormat === 'uint' && info.bitsPerSample === 8) {
      throw new DatasetError('unsupported', path, `${path}: an 8-bit TIFF cannot hold depth; expected float32 (metres) or 16-bit`);
    }
    const scale = info.sampleFormat === 'float' ? 1 : unit;
    return zFrom(readUncompressedTiff(bytes, info, path), info.samplesPerPixel, info.width, info.height, scale, path);
  }
  // Compressed, tiled or BigTIFF: sharp, on the routes that return exact values (see the header comment).
  const meta = await sharp(bytes).metadata();
  const route: 'scrgb' | 'b-w' | 'grey16' | null =
    meta.depth === 'float' && meta.space === 'scrgb' && meta.channels === 3 ? 'scrgb'
      : meta.depth === 'float' && meta.channels === 1 ? 'b-w'
        : meta.depth === 'ushort' && meta.channels === 1 ? 'grey16'
          : null;
  if (!route) {
    throw new DatasetError('unsupported', path,
      `${path}: ${meta.channels}-channel ${meta.depth} TIFF (${meta.space}, compression ${info?.compression ?? '?'}) is not a supported depth format; ` +
      'store z as float32 (1 or 3 channels) or uint16, uncompressed (e.g. tiffcp -c none in.tiff out.tiff)');
  }
  const { data, info: out } = await sharp(bytes).toColourspace(route).raw({ depth: route === 'grey16' ? 'ushort' : 'float' }).toBuffer({ resolveWithObject: true });
  const samples = route === 'grey16' ? typedCopy(data, Uint16Array) : typedCopy(data, Float32Array);
  return zFrom(samples, out.channels, out.width, out.height, route === 'grey16' ? unit : 1, path);
}

async function depthFromPng(bytes: Uint8Array, path: string, unit: number): Promise<DepthMap> {
  const meta = await sharp(bytes).metadata();
  if (meta.depth !== 'ushort' || meta.channels !== 1) {
    throw new DatasetError('unsupported', path,
      `${path}: depth PNGs must be single-channel 16-bit (GRAY16), this one is ${meta.channels}-channel ${meta.depth === 'ushort' ? '16' : '8'}-bit`);
  }
  const { data, info } = await sharp(bytes).toColourspace('grey16').raw({ depth: 'ushort' }).toBuffer({ resolveWithObject: true });
  return zFrom(typedCopy(data, Uint16Array), info.channels, info.width, info.height, unit, path);
}

/**
 * Decodes a depth map at its native resolution (AST's depth preparation — gap filling, background plane —
 * must run before any resize, see src/model/depth.ts): a float TIFF (1 channel z or 3 channels xyz, z = last,
 * metres) or a 16-bit PNG/TIFF (steps × `unitMetres`). 0 = missing. The format is told by the file's magic
 * bytes, not its extension.
 */
export async function decodeDepth(path: string, opts: DecodeDepthOptions = {}): Promise<DepthMap> {
  const unit = opts.unitMetres ?? DEFAULT_DEPTH_UNIT_METRES;
  if (!(unit > 0) || !Number.isFinite(unit)) throw new DatasetError('invalid-option', path, `decodeDepth ${path}: unitMetres must be a positive number, got ${unit}`);
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new DatasetError(code === 'ENOENT' ? 'missing' : 'unreadable', path, code === 'ENOENT' ? `${path} does not exist` : `cannot read ${path}: ${describeCause(e)}`, { cause: e });
  }
  try {
    if (isTiff(bytes)) return await depthFromTiff(bytes, path, unit);
    if (bytes.length >= 8 && bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47) return await depthFromPng(bytes, path, unit);
  } catch (e) {
    throw sharpError(path, e);
  }
  throw new DatasetError('unreadable', path, `${path} is neither a TIFF nor a PNG file, so it cannot be a depth map`);
}

/**
 * Cheap validity check of an image or mask without decoding its pixels (sharp reads the header only):
 * catches garbage, wrong formats and headers cut off by an interrupted copy. Used by loadDataset's `verify`.
 */
export async function probeImage(path: string): Promise<Size> {
  try {
    const meta = await sharp(path).metadata();
    if (!meta.width || !meta.height) throw new DatasetError('unreadable', path, `${path}: image has no size`);
    return { width: meta.width, height: meta.height };
  } catch (e) {
    throw sharpError(path, e);
  }
}

/** Header check of a depth file: TIFF directory or PNG header, and that the format can hold depth. */
export async function probeDepth(path: string): Promise<Size> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new DatasetError('unreadable', path, `cannot read ${path}: ${describeCause(e)}`, { cause: e });
  }
  if (isTiff(bytes)) {
    const info = readTiffInfo(bytes, path);
    if (info) {
      if (info.sampleFormat === 'uint' && info.bitsPerSample === 8) throw new DatasetError('unsupported', path, `${path}: an 8-bit TIFF cannot hold depth`);
      if (canReadUncompressed(info)) {
        const last = info.stripOffsets.length - 1;
        const end = info.stripOffsets[last]! + (info.stripByteCounts[last] ?? 0);
        if (end > bytes.length) throw new DatasetError('unreadable', path, `${path}: TIFF data runs past the end of the file (truncated?)`);
      }
      return { width: info.width, height: info.height };
    }
  }
  try {
    const meta = await sharp(bytes).metadata();
    if (meta.format === 'png' && (meta.depth !== 'ushort' || meta.channels !== 1)) {
      throw new DatasetError('unsupported', path, `${path}: depth PNGs must be single-channel 16-bit (GRAY16)`);
    }
    return { width: meta.width ?? 0, height: meta.height ?? 0 };
  } catch (e) {
    throw sharpError(path, e);
  }
}
