/**
 * The on-device model store: every bundle the device may run, and which one it runs.
 *
 *   <dir>/                               (the agent uses <stateDir>/models)
 *     active.json                        { active, previous, rolledBackFrom }: replaced atomically
 *     versions/<id>@<version>-<sha12>/   complete, verified bundles (sha12: of manifest.json's bytes)
 *     staging/                           work folders of stage(), prune's trash; emptied at open
 *
 * Downloads and chunk transfers land elsewhere (e.g. <dir>/incoming, <dir>/chunks: see delivery/), and
 * stage() takes the finished .tar from there.
 *
 * The invariant: once a version was activated, whatever instant the process dies (SIGKILL, power cut),
 * the next open finds active.json naming a complete, verified version. It holds because every state
 * transition is one atomic step:
 *   - stage writes only inside staging/ (fsynced file by file, verified against the manifest);
 *   - commit is one rename staging/… → versions/<name>, then an fsync of versions/;
 *   - activate / rollback / repair are one atomic replace of active.json (writeFileAtomically), made only
 *     after the target version was verified and its rename made durable;
 *   - prune renames a version out into staging/ (one step) before deleting it, so versions/ never holds a
 *     half-deleted folder; active and previous are never pruned.
 * open() then repairs what a crash can leave: staging leftovers, a version folder that does not match its
 * name (copied in by hand, damaged disk), and an active version that is missing or fails verification
 * (falls back to previous, else to the newest complete version), and reports what it did.
 *
 * One process owns a store (the agent); other processes (CLI) open it with `readOnly`, which neither
 * repairs nor cleans. Signatures are checked when a bundle enters (stage), not at every open: trust is an
 * admission decision, and dropping a key from the trusted list must not brick a device at boot.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, mkdtemp, open as openFile, readdir, readFile, rename, rm, stat, statfs, utimes } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import pino, { type Logger } from 'pino';
import * as tar from 'tar';
import { z } from 'zod';
import { BundleManifestSchema, describeIssues, type BundleManifest } from '../config/bundle-manifest.js';
import { SIGNATURE_FILE } from '../config/signature-schema.js';
import { fsyncPath, writeFileAtomically } from '../storage/atomic-file.js';
import { BundleError } from './bundle-store.js';
import { verifyBundleSignature, type PublicKeySource, type TrustedKey } from './signing.js';

export type ModelStoreErrorReason =
  /** Not enough free disk space to stage the bundle. */
  | 'no-space'
  /** No such version in the store. */
  | 'not-found'
  /** rollback() without a previous version. */
  | 'no-previous'
  /** A stored version fails verification (files missing, sizes or sha256s differ). */
  | 'corrupt'
  /** A staged bundle that is not from this store, or was already committed or discarded. */
  | 'invalid-staged'
  /** A mutation on a store opened read-only. */
  | 'read-only';

export class ModelStoreError extends Error {
  readonly reason: ModelStoreErrorReason;
  readonly neededBytes?: number;
  readonly freeBytes?: number;
  constructor(reason: ModelStoreErrorReason, message: string, extra: { neededBytes?: number; freeBytes?: number; cause?: unknown } = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = 'ModelStoreError';
    this.reason = reason;
    if (extra.neededBytes !== undefined) this.neededBytes = extra.neededBytes;
    if (extra.freeBytes !== undefined) this.freeBytes = extra.freeBytes;
  }
}

export interface ModelStoreOptions {
  /** Versions kept by prune() (active and previous are kept beyond it). Default 3. */
  keep?: number;
  logger?: Logger;
  /**
   * When set, stage() refuses bundles not signed by one of these keys (an empty list refuses all).
   * Unset: signatures are not required (development, bundles copied in by hand).
   */
  trustedKeys?: readonly (PublicKeySource | TrustedKey)[];
  /** Free space kept beyond twice the bundle size when staging (logs, results, the OS need room). Default 64 MiB. */
  freeSpaceMarginBytes?: number;
  /** Open without repairing or cleaning anything; every mutation is refused. For a second process (CLI). */
  readOnly?: boolean;
  /** Test seam: replaces fs.statfs for the free-space check. */
  statfs?: (path: string) => Promise<{ bavail: number | bigint; bsize: number | bigint }>;
}

export interface StoredVersion {
  /** Folder name under versions/: `<id>@<version>-<sha12>`. */
  name: string;
  dir: string;
  id: string;
  version: string;
  manifestSha256: string;
  manifest: BundleManifest;
  /** Sum of the manifest-listed files' sizes. */
  bytes: number;
  /** When commit() moved it in (the folder's mtime, set just before the rename). */
  committedAt: Date;
}

export interface StagedBundle {
  /** The name it will have under versions/. */
  name: string;
  /** The verified bundle folder inside staging/. */
  dir: string;
  manifest: BundleManifest;
  manifestSha256: string;
  bytes: number;
  /** Key id of the verified signature; null when the store requires none (a signature.json is kept anyway). */
  signedBy: string | null;
}

export type RepairOutcome =
  /** active.json names a complete version. */
  | 'ok'
  /** No version was ever activated. */
  | 'nothing-active'
  | 'fell-back-to-previous'
  | 'fell-back-to-newest'
  /** The active version is unusable and no other version verifies: nothing can run. */
  | 'no-valid-version';

export interface RepairReport {
  outcome: RepairOutcome;
  /** What active.json named before open (null: nothing, or unreadable). */
  activeBefore: string | null;
  active: string | null;
  /** Why the active version was replaced, for the outcomes that replace it. */
  reason?: string;
  /** Leftovers and broken folders removed, with why. */
  removed: { path: string; reason: string }[];
}

// -------------------------------------------------------------------------------------------- state file

const STATE_FILE = 'active.json';
const VERSIONS = 'versions';
const STAGING = 'staging';
/** `<id>@<version>-<sha12>`: id and version as the manifest schema allows them. */
const VERSION_NAME = /^([a-z0-9][a-z0-9._-]{0,63})@(.+)-([0-9a-f]{12})$/;

const StateSchema = z.object({
  format: z.literal('ast-edge-model-state'),
  version: z.literal(1),
  active: z.string().regex(VERSION_NAME).nullable(),
  /** What rollback() returns to. */
  previous: z.string().regex(VERSION_NAME).nullable(),
  /** The version last rolled back from: never picked again automatically (a failed self-test put it there). */
  rolledBackFrom: z.string().regex(VERSION_NAME).nullable(),
  updatedAt: z.string(),
});
type State = z.infer<typeof StateSchema>;

const EMPTY_STATE: State = { format: 'ast-edge-model-state', version: 1, active: null, previous: null, rolledBackFrom: null, updatedAt: '' };

// ---------------------------------------------------------------------------------------------- test seam

/**
 * Crash-test seam: with AST_EDGE_TEST_PAUSE_AT=<point> in the environment, the store stops for good at
 * that point after writing "AST_EDGE_TEST_PAUSED <point>" to stderr, so a test can SIGKILL it exactly
 * there (test/model-store.test.ts). Points: stage:copying, stage:verified, commit:before-rename,
 * commit:after-rename, activate:before-write, activate:after-write, rollback:before-write,
 * rollback:after-write, prune:after-rename. Without the variable it is one environment lookup.
 */
async function pausePoint(point: string): Promise<void> {
  if (process.env.AST_EDGE_TEST_PAUSE_AT !== point) return;
  process.stderr.write(`AST_EDGE_TEST_PAUSED ${point}\n`);
  await new Promise(() => setInterval(() => {}, 60_000));
}

// ------------------------------------------------------------------------------------------- file helpers

async function hashFile(path: string): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of createReadStream(path)) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).byteLength;
  }
  return { sha256: hash.digest('hex'), bytes };
}

const sha256Hex = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

function parseManifest(bytes: Buffer, where: string): BundleManifest {
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch (e) {
    throw new BundleError(`${where}: manifest.json is not valid JSON (${(e as Error).message})`, where, 'manifest.json');
  }
  const parsed = BundleManifestSchema.safeParse(json);
  if (!parsed.success) throw new BundleError(`${where}: manifest.json is invalid: ${describeIssues(parsed.error)}`, where, 'manifest.json');
  return parsed.data;
}

async function readManifestBytes(dir: string): Promise<Buffer> {
  try {
    return await readFile(join(dir, 'manifest.json'));
  } catch {
    throw new BundleError(`${dir}: no manifest.json (is this a bundle?)`, dir, 'manifest.json');
  }
}

/** Every listed file present with its size and sha256 (`full`), or just present with its size (quick). */
async function checkFiles(dir: string, manifest: BundleManifest, full: boolean): Promise<void> {
  for (const [name, entry] of Object.entries(manifest.files)) {
    const path = join(dir, name);
    const actual = full ? await hashFile(path).catch(() => null) : await stat(path).then((s) => ({ bytes: s.size, sha256: entry.sha256 }), () => null);
    if (!actual) throw new BundleError(`${dir}: file "${name}" listed in the manifest is missing`, dir, `files.${name}`);
    if (actual.bytes !== entry.bytes) {
      throw new BundleError(`${dir}: file "${name}" has ${actual.bytes} bytes, the manifest says ${entry.bytes} (truncated?)`, dir, `files.${name}`);
    }
    if (actual.sha256 !== entry.sha256) {
      throw new BundleError(`${dir}: file "${name}" has sha256 ${actual.sha256}, the manifest says ${entry.sha256} (corrupt)`, dir, `files.${name}`);
    }
  }
}

const versionName = (m: BundleManifest, manifestSha256: string) => `${m.id}@${m.version}-${manifestSha256.slice(0, 12)}`;
const totalBytes = (m: BundleManifest) => Object.values(m.files).reduce((s, f) => s + f.bytes, 0);

// ------------------------------------------------------------------------------------------------- store

export class ModelStore {
  readonly paths: { root: string; versions: string; staging: string; state: string };
  /** What open() found and did. */
  repairReport!: RepairReport;
  private state: State = EMPTY_STATE;
  private readonly staged = new Set<string>();
  /** Operations run one at a time: a prune must not interleave with an activate. */
  private queue: Promise<unknown> = Promise.resolve();
  private readonly keep: number;
  private readonly logger: Logger;

  private constructor(
    root: string,
    private readonly options: ModelStoreOptions,
  ) {
    this.paths = { root, versions: join(root, VERSIONS), staging: join(root, STAGING), state: join(root, STATE_FILE) };
    this.keep = Math.max(1, options.keep ?? 3);
    this.logger = options.logger ?? pino({ enabled: false });
  }

  static async open(dir: string, options: ModelStoreOptions = {}): Promise<ModelStore> {
    const store = new ModelStore(resolve(dir), options);
    if (options.readOnly) {
      store.state = await store.readState().catch(() => EMPTY_STATE);
      store.repairReport = { outcome: store.state.active ? 'ok' : 'nothing-active', activeBefore: store.state.active, active: store.state.active, removed: [] };
    } else {
      await mkdir(store.paths.versions, { recursive: true });
      await mkdir(store.paths.staging, { recursive: true });
      store.repairReport = await store.repair();
    }
    return store;
  }

  // ----------------------------------------------------------------------------------------------- reads

  /** The version to run, or null when none was ever activated (or none is usable: see repairReport). */
  async active(): Promise<StoredVersion | null> {
    return this.state.active ? this.describe(this.state.active) : null;
  }

  async previous(): Promise<StoredVersion | null> {
    return this.state.previous ? this.describe(this.state.previous) : null;
  }

  /** The pointers as stored in active.json. */
  pointers(): { active: string | null; previous: string | null; rolledBackFrom: string | null } {
    const { active, previous, rolledBackFrom } = this.state;
    return { active, previous, rolledBackFrom };
  }

  /** Stored versions, newest commit first (manifests read, files not hashed: see verify()). */
  async list(): Promise<StoredVersion[]> {
    const out: StoredVersion[] = [];
    for (const name of await readdir(this.paths.versions).catch(() => [] as string[])) {
      if (!VERSION_NAME.test(name)) continue;
      const v = await this.describe(name).catch(() => null);
      if (v) out.push(v);
    }
    return out.sort((a, b) => b.committedAt.getTime() - a.committedAt.getTime() || a.name.localeCompare(b.name));
  }

  /** Hashes every file of a stored version; throws ModelStoreError('corrupt') naming the first bad one. */
  async verify(name: string): Promise<StoredVersion> {
    const v = await this.describe(name);
    try {
      await checkFiles(v.dir, v.manifest, true);
    } catch (e) {
      throw new ModelStoreError('corrupt', `stored version ${name} is corrupt: ${(e as Error).message}`, { cause: e });
    }
    return v;
  }

  /** Reads a version's manifest and checks it matches the folder name (id, version, manifest sha256). */
  private async describe(name: string): Promise<StoredVersion> {
    const dir = join(this.paths.versions, name);
    const info = await stat(dir).catch(() => null);
    if (!info?.isDirectory()) throw new ModelStoreError('not-found', `no stored version ${name} in ${this.paths.versions}`);
    let bytes: Buffer;
    let manifest: BundleManifest;
    try {
      bytes = await readManifestBytes(dir);
      manifest = parseManifest(bytes, dir);
    } catch (e) {
      throw new ModelStoreError('corrupt', `stored version ${name} is corrupt: ${(e as Error).message}`, { cause: e });
    }
    const manifestSha256 = sha256Hex(bytes);
    if (versionName(manifest, manifestSha256) !== name) {
      throw new ModelStoreError('corrupt', `stored version ${name}: its manifest is ${versionName(manifest, manifestSha256)} (edited or misplaced)`);
    }
    return { name, dir, id: manifest.id, version: manifest.version, manifestSha256, manifest, bytes: totalBytes(manifest), committedAt: info.mtime };
  }

  // ------------------------------------------------------------------------------------------- mutations

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    if (this.options.readOnly) return Promise.reject(new ModelStoreError('read-only', `model store ${this.paths.root} is open read-only`));
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }

  /**
   * Copies a bundle folder, or unpacks a bundle .tar, into staging/ and verifies every file's size and
   * sha256 on the copy (what is verified is what will be committed), plus the signature when the store
   * requires one (`trustedLocally`: the operator's own configured bundle, no signature needed). Checks
   * free space first. Nothing outside staging/ changes.
   */
  stage(from: string, options: { trustedLocally?: boolean } = {}): Promise<StagedBundle> {
    return this.serial(() => this.doStage(resolve(from), options.trustedLocally ?? false));
  }

  private async doStage(source: string, trustedLocally: boolean): Promise<StagedBundle> {
    const info = await stat(source).catch(() => null);
    if (!info) throw new BundleError(`bundle ${source} does not exist`, source);
    const archive = info.isFile();
    if (archive) await refuseCompressed(source);
    // A folder's size comes from its manifest; an archive's from the file (its content is about as big).
    const size = archive ? info.size : totalBytes(parseManifest(await readManifestBytes(source), source));
    await this.checkFreeSpace(size);

    const work = await mkdtemp(join(this.paths.staging, 'stage-'));
    try {
      let src = source;
      if (archive) {
        src = join(work, 'unpacked');
        await mkdir(src);
        try {
          // Plain files and folders only: links in a bundle have no use and could point outside staging/.
          await tar.x({
            file: source,
            cwd: src,
            strict: true,
            preservePaths: false,
            brotli: false,
            zstd: false,
            filter: (_p, e) => 'type' in e && ['File', 'OldFile', 'Directory'].includes(e.type),
          });
        } catch (e) {
          throw new BundleError(`${source}: cannot unpack the archive (${(e as Error).message})`, source);
        }
        if (!(await exists(join(src, 'manifest.json')))) {
          const entries = await readdir(src);
          if (entries.length === 1 && (await exists(join(src, entries[0]!, 'manifest.json')))) src = join(src, entries[0]!);
        }
      }
      const manifestBytes = await readManifestBytes(src);
      const manifest = parseManifest(manifestBytes, source);
      const manifestSha256 = sha256Hex(manifestBytes);
      const dir = join(work, 'bundle');
      await mkdir(dir);
      const folders = new Set<string>([dir]);
      let first = true;
      for (const [name, entry] of Object.entries(manifest.files)) {
        const from = join(src, name);
        const to = join(dir, name);
        await mkdir(dirname(to), { recursive: true });
        folders.add(dirname(to));
        // An unpacked archive is already our own copy: move its files instead of copying them again.
        if (archive) await rename(from, to).catch((e) => Promise.reject(missing(source, name, e)));
        else await copyFile(from, to).catch((e) => Promise.reject(missing(source, name, e)));
        const actual = await hashFile(to);
        if (actual.bytes !== entry.bytes) {
          throw new BundleError(`${source}: file "${name}" has ${actual.bytes} bytes, the manifest says ${entry.bytes} (truncated?)`, source, `files.${name}`);
        }
        if (actual.sha256 !== entry.sha256) {
          throw new BundleError(`${source}: file "${name}" has sha256 ${actual.sha256}, the manifest says ${entry.sha256} (corrupt or tampered)`, source, `files.${name}`);
        }
        // Data on disk before the rename that publishes it: a power cut must not leave a named, empty file.
        await fsyncPath(to);
        if (first) await pausePoint('stage:copying');
        first = false;
      }
      for (const meta of ['manifest.json', SIGNATURE_FILE]) {
        const bytes = meta === 'manifest.json' ? manifestBytes : await readFile(join(src, meta)).catch(() => null);
        if (!bytes) continue;
        const fh = await openFile(join(dir, meta), 'w');
        try {
          await fh.writeFile(bytes);
          await fh.sync();
        } finally {
          await fh.close();
        }
      }
      for (const f of folders) await fsyncPath(f);
      let signedBy: string | null = null;
      // A bundle the operator installed by hand (the configured model.bundle) is trusted like the config
      // file itself; everything that arrives remotely must carry a trusted signature.
      if (this.options.trustedKeys && !trustedLocally) signedBy = (await verifyBundleSignature(dir, this.options.trustedKeys)).keyId;
      if (archive) await rm(join(work, 'unpacked'), { recursive: true, force: true });
      await pausePoint('stage:verified');
      this.staged.add(dir);
      const staged: StagedBundle = { name: versionName(manifest, manifestSha256), dir, manifest, manifestSha256, bytes: totalBytes(manifest), signedBy };
      this.logger.info({ version: staged.name, from: source, bytes: staged.bytes, signedBy }, 'model store: bundle staged and verified');
      return staged;
    } catch (e) {
      await rm(work, { recursive: true, force: true });
      throw e;
    }
  }

  private async checkFreeSpace(bundleBytes: number): Promise<void> {
    const s = await (this.options.statfs ?? statfs)(this.paths.staging);
    const free = Number(s.bavail) * Number(s.bsize);
    const margin = this.options.freeSpaceMarginBytes ?? 64 << 20;
    // Twice the bundle: an archive plus its unpacked copy, or the copy plus the version it may replace.
    const needed = 2 * bundleBytes + margin;
    if (free < needed) {
      throw new ModelStoreError(
        'no-space',
        `not enough disk space to stage the bundle in ${this.paths.staging}: ${needed} bytes needed (2 × ${bundleBytes} + ${margin} margin), ${free} free`,
        { neededBytes: needed, freeBytes: free },
      );
    }
  }

  /** Drops a staged bundle that will not be committed. */
  discard(staged: StagedBundle): Promise<void> {
    return this.serial(async () => {
      this.staged.delete(staged.dir);
      await rm(dirname(staged.dir), { recursive: true, force: true });
    });
  }

  /**
   * Moves a staged bundle into versions/ (one rename, then an fsync of versions/). A version already
   * stored under the same name (same manifest bytes) is kept if it still verifies; the staged copy is
   * dropped.
   */
  commit(staged: StagedBundle): Promise<StoredVersion> {
    return this.serial(async () => {
      if (!this.staged.has(staged.dir) || !(await exists(staged.dir))) {
        throw new ModelStoreError('invalid-staged', `${staged.dir} is not a staged bundle of this store (already committed or discarded?)`);
      }
      const target = join(this.paths.versions, staged.name);
      const work = dirname(staged.dir);
      try {
        if (await exists(target)) {
          const ok = await this.verify(staged.name).then(
            () => true,
            (e) => (this.logger.warn({ version: staged.name, err: (e as Error).message }, 'model store: replacing a corrupt stored copy'), false),
          );
          if (ok) {
            this.logger.info({ version: staged.name }, 'model store: version already stored');
            return await this.describe(staged.name);
          }
          await this.moveOut(target);
        }
        // The mtime orders versions by commit time ("newest" for repair and prune).
        const now = new Date();
        await utimes(staged.dir, now, now);
        await pausePoint('commit:before-rename');
        await rename(staged.dir, target);
        await pausePoint('commit:after-rename');
        // Durable before anyone can point active.json at it.
        await fsyncPath(this.paths.versions);
        this.logger.info({ version: staged.name }, 'model store: version committed');
        return await this.describe(staged.name);
      } finally {
        this.staged.delete(staged.dir);
        await rm(work, { recursive: true, force: true });
      }
    });
  }

  /** Makes a stored version the active one (verified first); the current one becomes `previous`. */
  activate(name: string): Promise<StoredVersion> {
    return this.serial(async () => {
      const v = await this.verify(name);
      if (this.state.active === name) return v;
      await this.writeState({ active: name, previous: this.state.active, rolledBackFrom: null }, 'activate');
      this.logger.info({ active: name, previous: this.state.previous }, 'model store: version activated');
      return v;
    });
  }

  /**
   * Returns to the previous version (verified first). The version rolled back from is remembered and
   * `previous` cleared, so a second rollback fails instead of re-activating a model just judged bad.
   */
  rollback(): Promise<StoredVersion> {
    return this.serial(async () => {
      const { active, previous } = this.state;
      if (!previous) {
        const why = this.state.rolledBackFrom ? ` (already rolled back from ${this.state.rolledBackFrom})` : '';
        throw new ModelStoreError('no-previous', `cannot roll back: no previous version${why}`);
      }
      const v = await this.verify(previous);
      await this.writeState({ active: previous, previous: null, rolledBackFrom: active }, 'rollback');
      this.logger.warn({ active: previous, rolledBackFrom: active }, 'model store: rolled back');
      return v;
    });
  }

  /** Removes the oldest versions beyond `keep`, never the active or previous one. Returns the names removed. */
  prune(): Promise<string[]> {
    return this.serial(async () => {
      const protectedNames = new Set([this.state.active, this.state.previous].filter((n): n is string => n !== null));
      const all = await this.list();
      const others = all.filter((v) => !protectedNames.has(v.name));
      const room = Math.max(0, this.keep - protectedNames.size);
      const removed: string[] = [];
      for (const v of others.slice(room)) {
        await this.moveOut(v.dir, 'prune');
        removed.push(v.name);
      }
      if (removed.length) this.logger.info({ removed }, 'model store: pruned old versions');
      return removed;
    });
  }

  // ------------------------------------------------------------------------------------------- internals

  /** Deletes a folder under versions/ in two steps: one atomic rename into staging/, then rm. */
  private async moveOut(dir: string, pauseAs?: string): Promise<void> {
    const trash = join(this.paths.staging, `trash-${basename(dir)}-${process.pid}-${Date.now()}`);
    await rename(dir, trash);
    await fsyncPath(this.paths.versions);
    if (pauseAs) await pausePoint(`${pauseAs}:after-rename`);
    await rm(trash, { recursive: true, force: true });
  }

  private async readState(): Promise<State> {
    const text = await readFile(this.paths.state, 'utf8');
    return StateSchema.parse(JSON.parse(text));
  }

  private async writeState(next: Pick<State, 'active' | 'previous' | 'rolledBackFrom'>, step: string): Promise<void> {
    const state: State = { ...EMPTY_STATE, ...next, updatedAt: new Date().toISOString() };
    await pausePoint(`${step}:before-write`);
    await writeFileAtomically(this.paths.state, JSON.stringify(state, null, 2) + '\n');
    this.state = state;
    await pausePoint(`${step}:after-write`);
  }

  private async repair(): Promise<RepairReport> {
    const removed: RepairReport['removed'] = [];
    const remove = async (path: string, reason: string) => {
      await rm(path, { recursive: true, force: true });
      removed.push({ path, reason });
      this.logger.warn({ path, reason }, 'model store: removed');
    };
    // 1. Anything in staging/ is an interrupted stage, commit or prune.
    for (const name of await readdir(this.paths.staging)) await remove(join(this.paths.staging, name), 'interrupted stage, commit or prune');
    // 2. Temp files of an interrupted active.json replace.
    for (const name of await readdir(this.paths.root)) {
      if (name.startsWith(`${STATE_FILE}.tmp-`)) await remove(join(this.paths.root, name), 'interrupted write of active.json');
    }
    // 3. versions/: only folders whose manifest matches their name and whose files are all there.
    for (const name of await readdir(this.paths.versions)) {
      const path = join(this.paths.versions, name);
      if (!VERSION_NAME.test(name)) {
        await this.moveOut(path);
        removed.push({ path, reason: 'not a version folder' });
        continue;
      }
      const problem = await this.describe(name)
        .then((v) => checkFiles(v.dir, v.manifest, false))
        .then(
          () => null,
          (e) => (e as Error).message,
        );
      if (problem) {
        await this.moveOut(path);
        removed.push({ path, reason: problem });
        this.logger.error({ path, reason: problem }, 'model store: removed a broken version');
      }
    }
    // 4. active.json.
    let state: State;
    let unreadable: string | null = null;
    try {
      state = await this.readState();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        this.state = EMPTY_STATE;
        return this.opened({ outcome: 'nothing-active', activeBefore: null, active: null, removed });
      }
      unreadable = `active.json is unreadable (${(e as Error).message})`;
      state = EMPTY_STATE;
    }
    this.state = state;
    const activeBefore = state.active;
    const usable = async (name: string | null): Promise<string | null> => {
      if (!name) return 'none';
      return this.verify(name).then(
        () => null,
        (e) => (e as Error).message,
      );
    };
    const problem = unreadable ?? (state.active ? await usable(state.active) : null);
    if (!problem) {
      if (!state.active) return this.opened({ outcome: 'nothing-active', activeBefore, active: null, removed });
      // previous is only checked for presence here; rollback() verifies it fully before using it.
      if (state.previous && !(await exists(join(this.paths.versions, state.previous)))) {
        this.logger.warn({ previous: state.previous }, 'model store: previous version is gone; rollback unavailable');
        await this.writeState({ active: state.active, previous: null, rolledBackFrom: state.rolledBackFrom }, 'repair');
      }
      return this.opened({ outcome: 'ok', activeBefore, active: state.active, removed });
    }
    // The active version is unusable: remove it if it is there, then fall back.
    this.logger.error({ active: state.active, reason: problem }, 'model store: active version unusable, falling back');
    if (state.active && (await exists(join(this.paths.versions, state.active)))) {
      await this.moveOut(join(this.paths.versions, state.active));
      removed.push({ path: join(this.paths.versions, state.active), reason: problem });
    }
    let chosen: string | null = null;
    let outcome: RepairOutcome = 'no-valid-version';
    if (state.previous && !(await usable(state.previous))) {
      chosen = state.previous;
      outcome = 'fell-back-to-previous';
    } else {
      // Newest first; the version last rolled back from only when nothing else is left.
      const candidates = (await this.list()).map((v) => v.name).filter((n) => n !== state.active && n !== state.previous);
      candidates.sort((a, b) => Number(a === state.rolledBackFrom) - Number(b === state.rolledBackFrom));
      for (const name of candidates) {
        if (!(await usable(name))) {
          chosen = name;
          outcome = 'fell-back-to-newest';
          break;
        }
      }
    }
    await this.writeState({ active: chosen, previous: null, rolledBackFrom: state.rolledBackFrom }, 'repair');
    return this.opened({ outcome, activeBefore, active: chosen, reason: problem, removed });
  }

  private opened(report: RepairReport): RepairReport {
    const level = report.outcome === 'ok' || report.outcome === 'nothing-active' ? 'info' : 'error';
    this.logger[level]({ root: this.paths.root, ...report }, `model store opened: ${report.outcome}`);
    return report;
  }
}

/**
 * Bundles travel as plain .tar (packBundle). A compressed archive would unpack to an unknown size, which
 * would make the free-space check meaningless (and a small download could fill the disk).
 */
async function refuseCompressed(path: string): Promise<void> {
  const fh = await openFile(path, 'r');
  try {
    const { buffer, bytesRead } = await fh.read(Buffer.alloc(4), 0, 4, 0);
    const head = buffer.subarray(0, bytesRead);
    const gzip = head[0] === 0x1f && head[1] === 0x8b;
    const zstd = head.equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]));
    if (gzip || zstd) {
      throw new BundleError(`${path}: is a ${gzip ? 'gzip' : 'zstd'}-compressed archive; a bundle is a plain .tar (ast-agent bundle pack)`, path);
    }
  } finally {
    await fh.close();
  }
}

function missing(source: string, name: string, cause: unknown): BundleError {
  return new BundleError(`${source}: file "${name}" listed in the manifest is missing (${(cause as Error).message})`, source, `files.${name}`);
}
