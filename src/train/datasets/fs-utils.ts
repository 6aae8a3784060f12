/**
 * Small file-system helpers shared by the dataset modules: sorted directory listings (so every dataset has
 * one deterministic order on every machine), bounded parallelism, and atomic tree writes.
 */
import { constants } from 'node:fs';
import { access, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { replaceFolderAtomically } from '../../storage/atomic-folder.js';
import { DatasetError, describeCause } from './errors.js';

/**
 * Code-point order, not `localeCompare`: the locale of a device must not change which image is sample 0
 * (and thus which images a seeded split or a limit picks).
 */
export function compareCodePoints(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export interface DirEntries {
  dirs: string[];
  files: string[];
}

/**
 * Names of the sub-folders and files of `dir`, each sorted. Hidden entries (".DS_Store", "._x.png" from
 * macOS copies, ".ipynb_checkpoints") are skipped: they are never samples. Symlinks are followed.
 */
export async function listDir(dir: string): Promise<DirEntries> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new DatasetError('missing', dir, `folder ${dir} does not exist`, { cause: e });
    if (code === 'ENOTDIR') throw new DatasetError('layout', dir, `${dir} is a file, a folder was expected`, { cause: e });
    throw new DatasetError('unreadable', dir, `cannot list folder ${dir}: ${describeCause(e)}`, { cause: e });
  }
  const dirs: string[] = [];
  const files: string[] = [];
  for (const name of names.filter((n) => !n.startsWith('.')).sort(compareCodePoints)) {
    const s = await stat(join(dir, name)).catch(() => null); // a dangling symlink is neither
    if (s?.isDirectory()) dirs.push(name);
    else if (s?.isFile()) files.push(name);
  }
  return { dirs, files };
}

/** True when `path` is an existing directory (false for files and missing paths). */
export async function isDir(path: string): Promise<boolean> {
  return (await stat(path).catch(() => null))?.isDirectory() ?? false;
}

/**
 * Checks that a file the layout lists can actually be opened: readable and not 0 bytes (the usual
 * leftover of an interrupted copy). Decoding checks (corrupt content) are in decode.ts / `verify`.
 */
export async function checkReadableFile(path: string): Promise<void> {
  let size: number;
  try {
    await access(path, constants.R_OK);
    size = (await stat(path)).size;
  } catch (e) {
    throw new DatasetError('unreadable', path, `cannot read ${path}: ${describeCause(e)}`, { cause: e });
  }
  if (size === 0) throw new DatasetError('unreadable', path, `${path} is empty (0 bytes): an interrupted copy?`);
}

/** `fn` over `items` with at most `limit` in flight, results in input order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return out;
}

/**
 * Writes a folder tree atomically: `build` fills a staging folder next to `out`, which then replaces `out`.
 * An interrupted generator (power cut, Ctrl-C) thus never leaves a half-written dataset that loads
 * without error and trains on a fraction of the images. An existing `out` is replaced.
 */
export async function writeTreeAtomically<R>(out: string, build: (staging: string) => Promise<R>): Promise<R> {
  return replaceFolderAtomically(out, build, { mode: 0o755 });
}
