/**
 * Replaces a folder as a whole: `build` fills a staging sibling, which is then swapped in (the old folder
 * renamed aside, the new one renamed into place, the old one removed). A crash at any point leaves either
 * the old folder or the new one at `target`, plus at most a `.tmp-*` or `.old-*` sibling — never a
 * half-written folder that loads without error. Bundles, evaluation reports and datasets are written this way.
 */
import { chmod, mkdir, mkdtemp, rename, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';

export interface ReplaceFolderOptions {
  /** Permissions of the new folder (mkdtemp creates it private, 0700). */
  mode?: number;
}

export async function replaceFolderAtomically<R>(
  dir: string,
  build: (staging: string) => Promise<R>,
  options: ReplaceFolderOptions = {},
): Promise<R> {
  const target = resolve(dir);
  await mkdir(dirname(target), { recursive: true });
  const staging = await mkdtemp(join(dirname(target), `.tmp-${basename(target)}-`));
  try {
    const result = await build(staging);
    if (options.mode !== undefined) await chmod(staging, options.mode);
    if (existsSync(target)) {
      const old = `${target}.old-${process.pid}-${Date.now()}`;
      await rename(target, old);
      await rename(staging, target);
      await rm(old, { recursive: true, force: true });
    } else {
      await rename(staging, target);
    }
    return result;
  } catch (e) {
    await rm(staging, { recursive: true, force: true });
    throw e;
  }
}
