/**
 * A minimal baseline-TIFF reader and writer for depth maps (MVTec 3D-AD xyz files: 3 × float32 per pixel).
 *
 * Why our own reader next to sharp: sharp/libvips interprets a 3-sample float TIFF with photometric RGB as
 * scRGB and, unless told `toColourspace('scrgb')`, converts it to sRGB — the coordinates come back as 0…255
 * colours. A 3-sample float TIFF with photometric MinIsBlack (what some writers produce for "3 channels of
 * data") is worse: libvips turns it into 5 bands, and with separate planes mixes rows of different planes.
 * Depth must arrive bit-exact, so uncompressed TIFFs (what MVTec 3D-AD and tifffile write by default) are
 * read here straight from the strips, whatever the photometric tag says; compressed ones go through sharp on
 * the routes checked in the tests (see decode.ts).
 */
import { deflateSync } from 'node:zlib';
import { DatasetError } from './errors.js';

export type TiffSampleFormat = 'uint' | 'int' | 'float' | 'unknown';

export interface TiffInfo {
  littleEndian: boolean;
  width: number;
  height: number;
  samplesPerPixel: number;
  /** Bits per sample (all samples must agree for the readers here). */
  bitsPerSample: number;
  sampleFormat: TiffSampleFormat;
  /** 1 = none, 5 = LZW, 8 / 32946 = Deflate, … */
  compression: number;
  /** 0/1 = MinIsWhite/MinIsBlack (grey), 2 = RGB, … (-1 when absent). */
  photometric: number;
  planar: 'contig' | 'separate';
  tiled: boolean;
  rowsPerStrip: number;
  stripOffsets: number[];
  stripByteCounts: number[];
}

const TYPE_SIZES: Record<number, number> = { 1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8 };

/** True when the bytes start like a classic or BigTIFF file. */
export function isTiff(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && ((bytes[0] === 0x49 && bytes[1] === 0x49 && bytes[2] === 42 && bytes[3] === 0) || (bytes[0] === 0x4d && bytes[1] === 0x4d && bytes[2] === 0 && bytes[3] === 42)
    || (bytes[0] === 0x49 && bytes[1] === 0x49 && bytes[2] === 43) || (bytes[0] === 0x4d && bytes[1] === 0x4d && bytes[3] === 43));
}

/**
 * Reads the first IFD's layout tags. Returns null for BigTIFF (left to sharp). Throws a DatasetError naming
 * `path` when the header or IFD is cut off.
 */
export function readTiffInfo(bytes: Uint8Array, path: string): TiffInfo | null {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const truncated = (): never => {
    throw new DatasetError('unreadable', path, `${path}: TIFF header or directory is truncated or corrupt`);
  };
  if (bytes.length < 8 || !isTiff(bytes)) throw new DatasetError('unreadable', path, `${path} is not a TIFF file`);
  const le = bytes[0] === 0x49;
  if (dv.getUint16(2, le) === 43) return null;
  const ifd = dv.getUint32(4, le);
  if (ifd + 2 > bytes.length) truncated();
  const n = dv.getUint16(ifd, le);
  if (ifd + 2 + n * 12 > bytes.length) truncated();
  const tags = new Map<number, number[]>();
  for (let i = 0; i < n; i++) {
    const p = ifd + 2 + i * 12;
    const tag = dv.getUint16(p, le);
    const type = dv.getUint16(p + 2, le);
    const count = dv.getUint32(p + 4, le);
    const size = TYPE_SIZES[type];
    if (size === undefined || (type !== 3 && type !== 4)) continue; // only SHORT/LONG tags matter here
    const at = size * count <= 4 ? p + 8 : dv.getUint32(p + 8, le);
    if (at + size * count > bytes.length) truncated();
    const values: number[] = [];
    for (let k = 0; k < count; k++) values.push(type === 3 ? dv.getUint16(at + 2 * k, le) : dv.getUint32(at + 4 * k, le));
    tags.set(tag, values);
  }
  const one = (tag: number, fallback: number): number => tags.get(tag)?.[0] ?? fallback;
  const width = one(256, 0);
  const height = one(257, 0);
  if (width <= 0 || height <= 0) throw new DatasetError('unreadable', path, `${path}: TIFF has no image size`);
  const spp = one(277, 1);
  const bps = tags.get(258) ?? [1];
  if (bps.some((b) => b !== bps[0])) throw new DatasetError('unsupported', path, `${path}: TIFF samples of different bit depths (${bps.join(', ')}) are not supported`);
  const fmt = one(339, 1);
  return {
    littleEndian: le,
    width,
    height,
    samplesPerPixel: spp,
    bitsPerSample: bps[0]!,
    sampleFormat: fmt === 1 ? 'uint' : fmt === 2 ? 'int' : fmt === 3 ? 'float' : 'unknown',
    compression: one(259, 1),
    photometric: one(262, -1),
    planar: one(284, 1) === 2 ? 'separate' : 'contig',
    tiled: tags.has(322),
    rowsPerStrip: Math.min(one(278, 0xffffffff), height),
    stripOffsets: tags.get(273) ?? [],
    stripByteCounts: tags.get(279) ?? [],
  };
}

/** True when {@link readUncompressedTiff} can read this file bit-exactly. */
export function canReadUncompressed(info: TiffInfo): boolean {
  const typed = (info.sampleFormat === 'float' && (info.bitsPerSample === 32 || info.bitsPerSample === 64))
    || (info.sampleFormat === 'uint' && (info.bitsPerSample === 8 || info.bitsPerSample === 16));
  return info.compression === 1 && !info.tiled && typed && info.stripOffsets.length > 0;
}

/**
 * The samples of an uncompressed, stripped TIFF (float32/64, uint8/16), interleaved [H, W, samplesPerPixel]
 * in float64 (exact for all four types). Throws a DatasetError naming `path` when a strip lies outside the file.
 */
export function readUncompressedTiff(bytes: Uint8Array, info: TiffInfo, path: string): Float64Array {
  const { width: w, height: h, samplesPerPixel: spp, littleEndian: le, bitsPerSample: bps } = info;
  const bytesPer = bps / 8;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const read = info.sampleFormat === 'float'
    ? bps === 32 ? (o: number) => dv.getFloat32(o, le) : (o: number) => dv.getFloat64(o, le)
    : bps === 16 ? (o: number) => dv.getUint16(o, le) : (o: number) => dv.getUint8(o);
  const out = new Float64Array(w * h * spp);
  const rps = info.rowsPerStrip;
  const stripsPerPlane = Math.ceil(h / rps);
  const planes = info.planar === 'separate' ? spp : 1;
  const perPixel = info.planar === 'separate' ? 1 : spp;
  if (info.stripOffsets.length < stripsPerPlane * planes) {
    throw new DatasetError('unreadable', path, `${path}: TIFF lists ${info.stripOffsets.length} strips, ${stripsPerPlane * planes} are needed`);
  }
  for (let plane = 0; plane < planes; plane++) {
    for (let s = 0; s < stripsPerPlane; s++) {
      const y0 = s * rps;
      const rows = Math.min(rps, h - y0);
      const count = rows * w * perPixel;
      const offset = info.stripOffsets[plane * stripsPerPlane + s]!;
      if (offset + count * bytesPer > bytes.length) {
        throw new DatasetError('unreadable', path, `${path}: TIFF strip ${plane * stripsPerPlane + s} runs past the end of the file (truncated?)`);
      }
      for (let k = 0; k < count; k++) {
        const v = read(offset + k * bytesPer);
        if (planes === 1) out[y0 * w * spp + k] = v;
        else out[(y0 * w + k) * spp + plane] = v;
      }
    }
  }
  return out;
}

export interface TiffImage {
  width: number;
  height: number;
  channels: number;
  /** Interleaved [H, W, channels]: Float32Array → float32 samples, Uint16Array → uint16 samples. */
  data: Float32Array | Uint16Array;
  /** Default: 'rgb' for 3 channels (what tifffile writes for an (H, W, 3) array), else 'minisblack'. */
  photometric?: 'rgb' | 'minisblack';
  /** 'deflate' (Adobe Deflate, 8) exists to test the decoders' compressed path; default 'none'. */
  compression?: 'none' | 'deflate';
  /** Store each channel as its own plane (PlanarConfiguration 2), one strip per plane. Default false. */
  planar?: boolean;
}

/**
 * Encodes a little-endian TIFF, one strip per plane, uncompressed unless asked: float32 or uint16 samples.
 * Used by the tests and the synthetic RGB-D generators. With photometric MinIsBlack and several channels
 * the extra channels are declared as ExtraSamples, as the TIFF spec asks.
 */
export function encodeTiff(img: TiffImage): Uint8Array {
  const { width: w, height: h, channels: c, data } = img;
  if (data.length !== w * h * c) throw new Error(`encodeTiff: ${data.length} samples for ${w}×${h}×${c}`);
  const isFloat = data instanceof Float32Array;
  const bytesPer = isFloat ? 4 : 2;
  const photometric = img.photometric ?? (c === 3 ? 'rgb' : 'minisblack');
  const colourSamples = photometric === 'rgb' ? 3 : 1;
  if (c < colourSamples) throw new Error(`encodeTiff: photometric ${photometric} needs at least ${colourSamples} channels`);
  const planes = img.planar ? c : 1;
  const perPlane = (w * h * c) / planes;
  const deflate = img.compression === 'deflate';
  const strips: Uint8Array[] = [];
  for (let plane = 0; plane < planes; plane++) {
    const raw = new Uint8Array(perPlane * bytesPer);
    const view = new DataView(raw.buffer);
    for (let k = 0; k < perPlane; k++) {
      const v = data[planes === 1 ? k : k * c + plane]!;
      if (isFloat) view.setFloat32(4 * k, v, true);
      else view.setUint16(2 * k, v, true);
    }
    strips.push(deflate ? new Uint8Array(deflateSync(raw)) : raw);
  }
  // [tag, type (3 SHORT, 4 LONG), values]; the strip offsets are patched once the layout is known.
  const entries: [number, number, number[]][] = [
    [256, 4, [w]], [257, 4, [h]], [258, 3, Array(c).fill(bytesPer * 8)], [259, 3, [deflate ? 8 : 1]],
    [262, 3, [photometric === 'rgb' ? 2 : 1]], [273, 4, Array(planes).fill(0)], [277, 3, [c]], [278, 4, [h]],
    [279, 4, strips.map((st) => st.length)], [284, 3, [planes > 1 ? 2 : 1]],
  ];
  if (c > colourSamples) entries.push([338, 3, Array(c - colourSamples).fill(0)]);
  entries.push([339, 3, Array(c).fill(isFloat ? 3 : 1)]);
  const ifdOffset = 8;
  let cursor = ifdOffset + 2 + entries.length * 12 + 4;
  const outOfLine = entries.map(([, type, v]) => {
    const bytes = (type === 3 ? 2 : 4) * v.length;
    if (bytes <= 4) return -1;
    const at = cursor;
    cursor += bytes + (bytes % 2);
    return at;
  });
  const dataOffset = cursor + ((4 - (cursor % 4)) % 4); // align the samples (cheap, and friendlier to readers)
  const offsets: number[] = [];
  let end = dataOffset;
  for (const st of strips) {
    offsets.push(end);
    end += st.length;
  }
  const out = new Uint8Array(end);
  const dv = new DataView(out.buffer);
  out[0] = 0x49; out[1] = 0x49;
  dv.setUint16(2, 42, true);
  dv.setUint32(4, ifdOffset, true);
  dv.setUint16(ifdOffset, entries.length, true);
  entries.forEach(([tag, type, v0], i) => {
    const v = tag === 273 ? offsets : v0;
    const p = ifdOffset + 2 + i * 12;
    dv.setUint16(p, tag, true);
    dv.setUint16(p + 2, type, true);
    dv.setUint32(p + 4, v.length, true);
    const at = outOfLine[i] === -1 ? p + 8 : outOfLine[i]!;
    if (outOfLine[i] !== -1) dv.setUint32(p + 8, at, true);
    v.forEach((x, k) => (type === 3 ? dv.setUint16(at + 2 * k, x, true) : dv.setUint32(at + 4 * k, x, true)));
  });
  dv.setUint32(ifdOffset + 2 + entries.length * 12, 0, true);
  strips.forEach((st, i) => out.set(st, offsets[i]!));
  return out;
}
