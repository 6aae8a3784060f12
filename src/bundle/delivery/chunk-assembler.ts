/**
 * Reassembles a bundle .tar sent as MQTT chunks (src/config/bundle-chunk-schema.ts) into a file for
 * ModelStore.stage.
 *
 * Memory stays small: each chunk is checked (schema, sha256, length) and written at its offset
 * (index × chunkBytes) in `<transferId>.partial`; only the per-chunk sha256s are kept, to tell a repeated
 * chunk (ignored) from a different one under the same index (refused). When the last chunk is in, the
 * whole file's sha256 is checked and the file renamed to `<transferId>.tar`.
 *
 * Bounded: totalBytes above maxBytes is refused at the first chunk, at most maxTransfers run at once, and
 * a transfer without a new chunk for idleTimeoutMs is dropped with its temp file. Restart-safe: the folder
 * belongs to the assembler, and open() empties it — a transfer cannot survive a restart (the sender's
 * command context does not either), so it is discarded rather than half-trusted.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm, statfs, type FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import pino, { type Logger } from 'pino';
import { BundleChunkSchema, chunkLength, type BundleChunk } from '../../config/bundle-chunk-schema.js';
import { describeIssues } from '../../config/bundle-manifest.js';
import { fsyncPath } from '../../storage/atomic-file.js';

export type ChunkErrorReason =
  /** Not a valid chunk message (`field` names the first problem). */
  | 'malformed'
  /** totalBytes above the limit. */
  | 'too-large'
  /** Not enough free disk space for the transfer. */
  | 'no-space'
  /** The chunk's bytes do not match its sha256. */
  | 'chunk-sha256-mismatch'
  /** A chunk with the same index but different content was received before. */
  | 'conflict'
  /** count / chunkBytes / totalBytes / totalSha256 differ from the transfer's first chunk. */
  | 'inconsistent'
  /** Every chunk is in but the file's sha256 is not totalSha256: the transfer is dropped. */
  | 'total-sha256-mismatch'
  /** The transfer timed out, failed or was aborted earlier: the sender must start a new one. */
  | 'ended'
  /** maxTransfers transfers are already running. */
  | 'busy'
  | 'closed';

export class ChunkError extends Error {
  readonly reason: ChunkErrorReason;
  readonly transferId?: string;
  readonly index?: number;
  readonly field?: string;
  constructor(reason: ChunkErrorReason, message: string, extra: { transferId?: string; index?: number; field?: string } = {}) {
    super(message);
    this.name = 'ChunkError';
    this.reason = reason;
    if (extra.transferId !== undefined) this.transferId = extra.transferId;
    if (extra.index !== undefined) this.index = extra.index;
    if (extra.field !== undefined) this.field = extra.field;
  }
}

export interface ChunkAssemblerOptions {
  /** A folder used by the assembler alone (emptied at open). */
  dir: string;
  maxBytes: number;
  /** Drop an incomplete transfer after this long without a new chunk. Default 5 minutes. */
  idleTimeoutMs?: number;
  /** Transfers in progress at once. Default 2. */
  maxTransfers?: number;
  /** Free space that must remain after the transfer's file. Default 64 MiB. */
  freeSpaceMarginBytes?: number;
  /** Called after a transfer was dropped for inactivity (its temp file is already gone). */
  onExpired?: (t: { transferId: string; received: number; count: number }) => void;
  logger?: Logger;
}

export type ChunkOutcome =
  | { status: 'accepted' | 'duplicate'; transferId: string; received: number; count: number }
  /** The .tar is complete and verified; the caller stages it and then deletes it. */
  | { status: 'complete'; transferId: string; file: string; bytes: number; sha256: string };

interface Transfer {
  id: string;
  meta: Pick<BundleChunk, 'count' | 'chunkBytes' | 'totalBytes' | 'totalSha256'>;
  path: string;
  fh: FileHandle;
  /** sha256 of each chunk received, by index. */
  chunks: (string | undefined)[];
  received: number;
  timer: NodeJS.Timeout;
}

/** Transfer ids that ended, remembered (bounded) so that late chunks get a clear answer. */
const REMEMBER_ENDED = 64;

export class ChunkAssembler {
  /** Leftovers of a previous run that open() removed. */
  readonly removedAtOpen: string[];
  private readonly transfers = new Map<string, Transfer>();
  private readonly ended = new Map<string, 'completed' | 'expired' | 'failed' | 'aborted'>();
  /** One chunk at a time: chunk bookkeeping and the final check never interleave. */
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private readonly logger: Logger;

  private constructor(
    private readonly dir: string,
    private readonly options: ChunkAssemblerOptions,
    removed: string[],
  ) {
    this.removedAtOpen = removed;
    this.logger = options.logger ?? pino({ enabled: false });
  }

  static async open(options: ChunkAssemblerOptions): Promise<ChunkAssembler> {
    const dir = resolve(options.dir);
    await mkdir(dir, { recursive: true });
    const removed: string[] = [];
    for (const name of await readdir(dir)) {
      await rm(join(dir, name), { recursive: true, force: true });
      removed.push(join(dir, name));
    }
    const a = new ChunkAssembler(dir, options, removed);
    if (removed.length) a.logger.warn({ removed }, 'chunk assembler: discarded transfers interrupted by a restart');
    return a;
  }

  /** Transfers in progress: id, chunks received, chunk count. */
  inProgress(): { transferId: string; received: number; count: number }[] {
    return [...this.transfers.values()].map((t) => ({ transferId: t.id, received: t.received, count: t.meta.count }));
  }

  /** Takes one chunk message (parsed JSON). Rejects with a ChunkError saying why a chunk is refused. */
  accept(message: unknown): Promise<ChunkOutcome> {
    const run = this.queue.then(() => this.handle(message));
    this.queue = run.catch(() => {});
    return run;
  }

  /** Drops a transfer in progress (the sender gave up). */
  abort(transferId: string): Promise<void> {
    const run = this.queue.then(() => this.drop(transferId, 'aborted'));
    this.queue = run.catch(() => {});
    return run;
  }

  /** Drops every transfer in progress and their temp files. */
  async close(): Promise<void> {
    this.closed = true;
    await this.queue;
    for (const id of [...this.transfers.keys()]) await this.drop(id, 'aborted');
  }

  private async handle(message: unknown): Promise<ChunkOutcome> {
    if (this.closed) throw new ChunkError('closed', 'chunk assembler is closed');
    const parsed = BundleChunkSchema.safeParse(message);
    if (!parsed.success) {
      const first = parsed.error.issues[0];
      const id = typeof (message as { transferId?: unknown })?.transferId === 'string' ? (message as { transferId: string }).transferId : undefined;
      throw new ChunkError('malformed', `bundle chunk refused: ${describeIssues(parsed.error)}`, {
        ...(id ? { transferId: id } : {}),
        field: first?.path.length ? first.path.map(String).join('.') : '(root)',
      });
    }
    const c = parsed.data;
    const at = { transferId: c.transferId, index: c.index };
    const data = Buffer.from(c.data, 'base64');
    const length = chunkLength(c);
    if (data.byteLength !== length) {
      throw new ChunkError('malformed', `chunk ${c.index} of ${c.transferId} has ${data.byteLength} bytes, ${length} expected`, { ...at, field: 'data' });
    }
    const sha = createHash('sha256').update(data).digest('hex');
    if (sha !== c.sha256) throw new ChunkError('chunk-sha256-mismatch', `chunk ${c.index} of ${c.transferId}: sha256 ${sha}, the message says ${c.sha256}`, at);

    let t = this.transfers.get(c.transferId);
    if (!t) {
      const ended = this.ended.get(c.transferId);
      if (ended === 'completed') return { status: 'duplicate', transferId: c.transferId, received: c.count, count: c.count };
      if (ended) throw new ChunkError('ended', `transfer ${c.transferId} already ${ended}: send it again under a new transferId`, at);
      t = await this.start(c);
    } else {
      const m = t.meta;
      for (const k of ['count', 'chunkBytes', 'totalBytes', 'totalSha256'] as const) {
        if (c[k] !== m[k]) {
          throw new ChunkError('inconsistent', `chunk ${c.index} of ${c.transferId}: ${k} is ${c[k]}, the transfer started with ${m[k]}`, { ...at, field: k });
        }
      }
    }

    const seen = t.chunks[c.index];
    if (seen !== undefined) {
      if (seen !== sha) throw new ChunkError('conflict', `chunk ${c.index} of ${c.transferId} was received before with other content`, at);
      t.timer.refresh();
      return { status: 'duplicate', transferId: t.id, received: t.received, count: t.meta.count };
    }
    await t.fh.write(data, 0, data.byteLength, c.index * c.chunkBytes);
    t.chunks[c.index] = sha;
    t.received++;
    t.timer.refresh();
    if (t.received < t.meta.count) return { status: 'accepted', transferId: t.id, received: t.received, count: t.meta.count };
    return this.finish(t);
  }

  private async start(c: BundleChunk): Promise<Transfer> {
    const at = { transferId: c.transferId, index: c.index };
    if (c.totalBytes > this.options.maxBytes) {
      throw new ChunkError('too-large', `transfer ${c.transferId}: ${c.totalBytes} bytes, the limit is ${this.options.maxBytes}`, at);
    }
    const max = this.options.maxTransfers ?? 2;
    if (this.transfers.size >= max) {
      throw new ChunkError('busy', `transfer ${c.transferId} refused: ${this.transfers.size} transfers in progress (${[...this.transfers.keys()].join(', ')})`, at);
    }
    const s = await statfs(this.dir);
    const free = Number(s.bavail) * Number(s.bsize);
    const needed = c.totalBytes + (this.options.freeSpaceMarginBytes ?? 64 << 20);
    if (free < needed) throw new ChunkError('no-space', `transfer ${c.transferId}: ${needed} bytes of disk needed in ${this.dir}, ${free} free`, at);
    const path = join(this.dir, `${c.transferId}.partial`);
    const fh = await open(path, 'w');
    const idleMs = this.options.idleTimeoutMs ?? 300_000;
    const timer = setTimeout(() => void this.expire(c.transferId), idleMs);
    // A pending transfer must not keep the process alive on shutdown.
    timer.unref();
    const t: Transfer = {
      id: c.transferId,
      meta: { count: c.count, chunkBytes: c.chunkBytes, totalBytes: c.totalBytes, totalSha256: c.totalSha256 },
      path,
      fh,
      chunks: new Array(c.count),
      received: 0,
      timer,
    };
    this.transfers.set(t.id, t);
    this.logger.info({ transferId: t.id, bytes: c.totalBytes, chunks: c.count }, 'chunk assembler: transfer started');
    return t;
  }

  private async finish(t: Transfer): Promise<ChunkOutcome> {
    clearTimeout(t.timer);
    this.transfers.delete(t.id);
    try {
      return await this.check(t);
    } catch (e) {
      // Whatever went wrong (I/O included), the transfer is over: leave no temp file behind.
      await rm(t.path, { force: true });
      this.remember(t.id, 'failed');
      throw e;
    }
  }

  private async check(t: Transfer): Promise<ChunkOutcome> {
    try {
      await t.fh.sync();
    } finally {
      await t.fh.close();
    }
    const hash = createHash('sha256');
    let bytes = 0;
    for await (const chunk of createReadStream(t.path)) {
      hash.update(chunk as Buffer);
      bytes += (chunk as Buffer).byteLength;
    }
    const sha256 = hash.digest('hex');
    if (sha256 !== t.meta.totalSha256 || bytes !== t.meta.totalBytes) {
      throw new ChunkError('total-sha256-mismatch', `transfer ${t.id}: assembled file has sha256 ${sha256} (${bytes} bytes), expected ${t.meta.totalSha256}; dropped`, {
        transferId: t.id,
      });
    }
    const file = join(this.dir, `${t.id}.tar`);
    await rename(t.path, file);
    await fsyncPath(this.dir);
    this.remember(t.id, 'completed');
    this.logger.info({ transferId: t.id, file, bytes }, 'chunk assembler: transfer complete');
    return { status: 'complete', transferId: t.id, file, bytes, sha256 };
  }

  private expire(id: string): Promise<void> {
    const run = this.queue.then(async () => {
      const t = this.transfers.get(id);
      if (!t) return;
      await this.drop(id, 'expired');
      this.logger.warn({ transferId: id, received: t.received, count: t.meta.count }, 'chunk assembler: transfer abandoned (timed out); temp file removed');
      this.options.onExpired?.({ transferId: id, received: t.received, count: t.meta.count });
    });
    this.queue = run.catch(() => {});
    return run;
  }

  private async drop(id: string, why: 'expired' | 'aborted'): Promise<void> {
    const t = this.transfers.get(id);
    if (!t) return;
    clearTimeout(t.timer);
    this.transfers.delete(id);
    await t.fh.close().catch(() => {});
    await rm(t.path, { force: true });
    this.remember(id, why);
  }

  private remember(id: string, how: 'completed' | 'expired' | 'failed' | 'aborted'): void {
    this.ended.delete(id);
    this.ended.set(id, how);
    if (this.ended.size > REMEMBER_ENDED) this.ended.delete(this.ended.keys().next().value!);
  }
}
