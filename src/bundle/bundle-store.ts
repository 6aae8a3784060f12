/**
 * Bundles on disk: a folder with manifest.json and the files it lists (or the same as one .tar).
 * Writing is atomic (a temp folder renamed into place, manifest last), reading validates the manifest
 * with zod and every file's sha256, so a half-written or tampered bundle is never loaded.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rename, stat, writeFile, readdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import * as tar from 'tar';
import { replaceFolderAtomically } from '../storage/atomic-folder.js';
import {
  BundleManifestSchema,
  describeIssues,
  type BundleManifest,
} from '../config/bundle-manifest.js';
import { SIGNATURE_FILE } from '../config/signature-schema.js';

export class BundleError extends Error {
  constructor(
    message: string,
    /** The bundle path the error is about. */
    readonly bundle: string,
    /** The manifest field or file at fault, when there is one. */
    readonly field?: string,
  ) {
    super(message);
    this.name = 'BundleError';
  }
}

export interface LoadedBundle {
  /** Folder holding the bundle's files (an extraction folder for .tar bundles). */
  dir: string;
  manifest: BundleManifest;
  /** Where it was loaded from (folder or archive). */
  source: string;
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export type ManifestDraft = Omit<BundleManifest, 'files'>;

/**
 * Writes a bundle folder at `dir` from a manifest draft and file contents; fills in `files`.
 * The folder appears complete or not at all: a crash mid-write leaves only a `.tmp-*` sibling.
 */
export async function writeBundle(dir: string, draft: ManifestDraft, files: Record<string, Uint8Array>): Promise<BundleManifest> {
  const target = resolve(dir);
  const entries = Object.fromEntries(Object.entries(files).map(([name, bytes]) => [name, { sha256: sha256(bytes), bytes: bytes.byteLength }]));
  const parsed = BundleManifestSchema.safeParse({ ...draft, files: entries });
  if (!parsed.success) throw new BundleError(`refusing to write an invalid bundle manifest: ${describeIssues(parsed.error)}`, target);
  const manifest = parsed.data;
  await replaceFolderAtomically(target, async (staging) => {
    for (const [name, bytes] of Object.entries(files)) {
      await mkdir(dirname(join(staging, name)), { recursive: true });
      await writeFile(join(staging, name), bytes);
    }
    await writeFile(join(staging, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
  });
  return manifest;
}

async function readManifest(dir: string, source: string): Promise<BundleManifest> {
  const path = join(dir, 'manifest.json');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new BundleError(`${source}: no manifest.json (is this a bundle?)`, source, 'manifest.json');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new BundleError(`${source}: manifest.json is not valid JSON (${(e as Error).message})`, source, 'manifest.json');
  }
  const parsed = BundleManifestSchema.safeParse(json);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    throw new BundleError(
      `${source}: manifest.json is invalid: ${describeIssues(parsed.error)}`,
      source,
      first?.path.map(String).join('.') || undefined,
    );
  }
  return parsed.data;
}

async function verifyFiles(dir: string, manifest: BundleManifest, source: string): Promise<void> {
  for (const [name, entry] of Object.entries(manifest.files)) {
    const path = join(dir, name);
    let bytes: Uint8Array;
    try {
      bytes = await readFile(path);
    } catch {
      throw new BundleError(`${source}: file "${name}" listed in the manifest is missing`, source, `files.${name}`);
    }
    if (bytes.byteLength !== entry.bytes) {
      throw new BundleError(`${source}: file "${name}" has ${bytes.byteLength} bytes, the manifest says ${entry.bytes} bytes (truncated?)`, source, `files.${name}`);
    }
    const actual = sha256(bytes);
    if (actual !== entry.sha256) {
      throw new BundleError(`${source}: file "${name}" has sha256 ${actual}, the manifest says ${entry.sha256} (corrupt or tampered)`, source, `files.${name}`);
    }
  }
}

/** Reads and verifies a bundle folder or `.tar` archive. */
export async function readBundle(path: string, options: { extractTo?: string } = {}): Promise<LoadedBundle> {
  const source = resolve(path);
  let info;
  try {
    info = await stat(source);
  } catch {
    throw new BundleError(`bundle ${source} does not exist`, source);
  }
  let dir = source;
  if (info.isFile()) {
    dir = options.extractTo ?? (await mkdtemp(join(tmpdir(), 'ast-bundle-')));
    await mkdir(dir, { recursive: true });
    try {
      await tar.x({ file: source, cwd: dir, strict: true, preservePaths: false });
    } catch (e) {
      throw new BundleError(`${source}: cannot unpack the archive (${(e as Error).message})`, source);
    }
    // Archives may hold the files at the top or inside one folder.
    if (!existsSync(join(dir, 'manifest.json'))) {
      const entries = await readdir(dir);
      if (entries.length === 1 && existsSync(join(dir, entries[0]!, 'manifest.json'))) dir = join(dir, entries[0]!);
    }
  }
  const manifest = await readManifest(dir, source);
  await verifyFiles(dir, manifest, source);
  return { dir, manifest, source };
}

/** Packs a bundle folder into a single `.tar` (verifying it first, so only good bundles travel). */
export async function packBundle(dir: string, outFile: string): Promise<void> {
  const loaded = await readBundle(dir);
  // signature.json is not in the manifest (it signs the manifest) but must travel with it.
  const signed = existsSync(join(loaded.dir, SIGNATURE_FILE));
  const names = ['manifest.json', ...(signed ? [SIGNATURE_FILE] : []), ...Object.keys(loaded.manifest.files)];
  const tmp = `${resolve(outFile)}.tmp-${process.pid}`;
  await tar.c({ file: tmp, cwd: loaded.dir, portable: true, noMtime: true }, names);
  await rename(tmp, resolve(outFile));
}

export async function readBundleFile(bundle: LoadedBundle, name: string): Promise<Uint8Array> {
  return new Uint8Array(await readFile(join(bundle.dir, name)));
}
