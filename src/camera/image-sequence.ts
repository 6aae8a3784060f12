/**
 * Turns a `file` source path into something multifilesrc can read. multifilesrc only understands a
 * printf pattern (`/data/part-%05d.png`), so a folder of arbitrarily named images is presented to it
 * as a staging folder of numbered symlinks in name order. The staging is redone on every (re)start, so
 * images that vanish or appear between runs are picked up. All file system calls are synchronous on
 * purpose: they are a handful of small calls per start, and the libuv thread pool that async fs would
 * use is largely occupied by GStreamer's blocking pull and bus requests (see gst-frame-source.ts).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CameraError } from './camera-error.js';

export type ImageCodec = 'png' | 'jpeg';

/** What multifilesrc reads: a printf pattern with one integer conversion, from `startIndex` on. */
export interface ImageSequence {
  pattern: string;
  startIndex: number;
  codec: ImageCodec;
  /** Number of images (folders only; unknown for patterns). */
  count?: number;
  /** The images in the order multifilesrc reads them (folders only). */
  files?: string[];
}

const CODEC_BY_EXTENSION: Record<string, ImageCodec> = { '.png': 'png', '.jpg': 'jpeg', '.jpeg': 'jpeg' };

/** Name order as people expect it: `part-2.png` before `part-10.png` (numeric runs compare as numbers). */
const byName = new Intl.Collator('en', { numeric: true }).compare;

/** One `%d`, `%5d` or `%05d` conversion (what multifilesrc passes to g_strdup_printf with one int). */
const INT_CONVERSION = /%(0?)(\d*)d/g;

export function isPrintfPattern(filePath: string): boolean {
  return /%0?\d*d/.test(filePath);
}

export function codecForPath(filePath: string): ImageCodec | undefined {
  return CODEC_BY_EXTENSION[path.extname(filePath).toLowerCase()];
}

/** Applies a one-conversion printf pattern to an index, the way multifilesrc does. */
export function formatPattern(pattern: string, index: number): string {
  return pattern
    .replace(INT_CONVERSION, (_m, zero: string, width: string) => {
      const digits = String(index);
      return width ? digits.padStart(Number(width), zero ? '0' : ' ') : digits;
    })
    .replaceAll('%%', '%');
}

/** The images of a folder in name order, all of one codec; refuses anything else with the folder's name. */
export function listFolderImages(folder: string, sourceDescription: string): { files: string[]; codec: ImageCodec } {
  let names: string[];
  try {
    names = fs.readdirSync(folder);
  } catch (error) {
    throw new CameraError(`cannot read the image folder ${folder}: ${(error as Error).message}`, sourceDescription, 'input', {
      cause: error,
    });
  }
  const images = names.filter((name) => !name.startsWith('.') && codecForPath(name) !== undefined).sort(byName);
  if (images.length === 0) {
    throw new CameraError(`the folder ${folder} holds no PNG or JPEG images`, sourceDescription, 'input');
  }
  const codecs = new Set(images.map((name) => codecForPath(name)));
  if (codecs.size > 1) {
    // One decoder per pipeline: a mixed folder would fail at the first image of the other kind.
    throw new CameraError(
      `the folder ${folder} mixes PNG and JPEG images; keep one kind per folder`,
      sourceDescription,
      'input',
    );
  }
  // Absolute: the staging symlinks live elsewhere, and a relative target would resolve against them.
  return { files: images.map((name) => path.resolve(folder, name)), codec: [...codecs][0]! };
}

/**
 * Checks a printf pattern and finds where its numbering starts (0 or 1, the two conventions in use);
 * multifilesrc would otherwise fail on a missing 0th file.
 */
export function resolvePattern(pattern: string, sourceDescription: string): ImageSequence {
  const conversions = pattern.match(INT_CONVERSION) ?? [];
  const otherPercents = pattern.replace(INT_CONVERSION, '').replaceAll('%%', '').includes('%');
  if (conversions.length !== 1 || otherPercents) {
    throw new CameraError(
      `the pattern ${pattern} must contain exactly one integer conversion such as %05d (and %% for a literal %)`,
      sourceDescription,
      'config',
    );
  }
  const codec = codecForPath(pattern);
  if (!codec) {
    throw new CameraError(`the pattern ${pattern} must end in .png, .jpg or .jpeg`, sourceDescription, 'config');
  }
  const absolute = path.resolve(pattern);
  const startIndex = [0, 1].find((index) => fs.existsSync(formatPattern(absolute, index)));
  if (startIndex === undefined) {
    throw new CameraError(
      `no image matches the pattern ${pattern} (looked for ${formatPattern(absolute, 0)} and ${formatPattern(absolute, 1)})`,
      sourceDescription,
      'input',
    );
  }
  return { pattern: absolute, startIndex, codec };
}

/**
 * A private temporary folder of symlinks `000000.png`, `000001.png`… pointing at a folder's images.
 * Symlinks rather than copies: staging is instant and costs no disk, and an image deleted from the
 * source folder becomes a dangling link that multifilesrc reports (EOS or error → restart → restage).
 */
export class StagingFolder {
  private folder: string | undefined;

  constructor(private readonly sourceDescription: string) {}

  stage(sourceFolder: string): ImageSequence {
    const { files, codec } = listFolderImages(sourceFolder, this.sourceDescription);
    const extension = codec === 'png' ? '.png' : '.jpg';
    this.folder ??= fs.mkdtempSync(path.join(os.tmpdir(), 'ast-edge-frames-'));
    for (const stale of fs.readdirSync(this.folder)) fs.rmSync(path.join(this.folder, stale), { force: true });
    files.forEach((file, index) => {
      fs.symlinkSync(file, path.join(this.folder!, `${String(index).padStart(6, '0')}${extension}`));
    });
    return { pattern: path.join(this.folder, `%06d${extension}`), startIndex: 0, codec, count: files.length, files };
  }

  dispose(): void {
    if (this.folder) fs.rmSync(this.folder, { recursive: true, force: true });
    this.folder = undefined;
  }
}
