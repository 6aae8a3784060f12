/**
 * The store-and-forward journal between the inspection loop and the MQTT broker. Every result or reject
 * signal is journaled durably on local disk before it is published and removed only once the broker has
 * acknowledged it (QoS 1 PUBACK); after a broker outage or a restart — clean, SIGKILL or power cut — what
 * was not acknowledged is replayed in id order. The journal is bounded in bytes and in age; what it has to
 * drop is always the oldest, and is counted and logged.
 *
 * Folder layout (`dir`):
 *   LOCK                    the owning process (see outbox/lock.ts); a second agent is refused
 *   <16-digit id>.log       segment: entry frames, appended in id order; named after the first id it may hold
 *   <16-digit id>.ack       the segment's removals (acked, dropped for age) as removal frames
 *   <16-digit id>.log.compact   a compaction in progress (deleted at open: the original is still intact)
 * Frames (magic, CRC-32, length, body) are described in outbox/frame.ts.
 *
 * Durability. Appends within one event-loop turn, and those arriving while a commit is being synced,
 * are written together in one durable write (group commit: one O_DSYNC `pwrite`, or `pwrite` + `fdatasync`
 * where O_DSYNC is missing); `append()` resolves only after it, and after the folder itself was synced
 * when the entry opened a new segment. Segments are never rewritten
 * in place: compaction writes a new file and renames it over the old one. A power cut can therefore only
 * tear the last, not yet acknowledged, commit; open() detects it by checksum and truncates it. A corrupt
 * record elsewhere (bit flip) is skipped with a warning and the records after it are kept.
 *
 * Removals are appended to the segment's ack file without fsync, batched: with the next commit, or at most
 * 20 ms after `ack()`. A removal lost in a power cut means the
 * entry is published once more (QoS 1 is at-least-once anyway; records carry `seq` for deduplication),
 * never that a result is lost. close() syncs them. A segment whose entries are all removed is deleted
 * (segment first, then its ack file, then the folder is synced); the newest segment is always kept, so
 * its name carries the next id across restarts even when everything was acknowledged.
 *
 * Bounds, checked before each commit: over `maxBytes` (segments and ack files on disk), the outbox first
 * deletes fully acknowledged segments, then compacts older segments that are at least half removed (live
 * entries copied to a new file), and only then drops the oldest segments whole (at most `segmentBytes`
 * more than strictly needed). Compaction thus runs only under size pressure, and a segment is rewritten
 * again only once half of what remains was removed, so its cost is bounded by the removals it reclaims.
 * Removal records written between commits can take the files past `maxBytes` by their own size (at most
 * 28 bytes per removal) until the next commit. Entries older than `maxAgeMs` are dropped oldest first, on a timer and
 * before each commit. Timestamps from before 2024 (a device whose clock was not yet set) never count as
 * expired, so an NTP step after boot cannot wipe the journal.
 *
 * Commit and removal writes run on the event loop (synchronously) while each stays within
 * `inlineWriteBudgetMs`, on the I/O thread pool otherwise (outbox/inline-writes.ts explains why: it keeps two
 * thread wake-ups off a reject's path).
 *
 * All file work runs one operation at a time on a private lane, so commits, removals, compactions and
 * reads never interleave; `ack()` and the age sweep only mark entries in memory and queue their records.
 */
import { constants as fsConstants, fdatasyncSync } from 'node:fs';
import { mkdir, open, readdir, readFile, realpath, rename, truncate, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import pino, { type Logger } from 'pino';
import { z } from 'zod';
import { OutboxError, describeCause } from './outbox/errors.js';
import {
  MAX_TOPIC_BYTES,
  decodeEntryFrame,
  encodeEntry,
  encodeRemoval,
  entryFrameBytes,
  frameEndAt,
  readEntryHeader,
  readRemoval,
  scanFrames,
  type RemovalReason,
} from './outbox/frame.js';
import { DirLock } from './outbox/lock.js';
import { Segment, SEGMENT_DIGITS, segmentName } from './outbox/segment.js';
import { isMissing, syncDir, writeFully, writeFullySync } from './outbox/fsutil.js';
import { InlineWritePolicy } from './outbox/inline-writes.js';

export { OutboxError, type OutboxErrorKind } from './outbox/errors.js';

export interface OutboxEntry<T = unknown> {
  /** Monotonic across restarts (gaps where an append failed or never became durable). */
  id: number;
  topic: string;
  /** JSON-serialisable. From `append`: the object passed in; from `pending`: parsed from the journal. */
  payload: T;
  /** Epoch ms, when `append` was called. */
  enqueuedAt: number;
}

export const OutboxLimitsSchema = z.strictObject({
  /** Bound on the journal's files (segments and ack files), in bytes. */
  maxBytes: z.int().min(8 * 1024),
  /** Entries older than this are dropped. */
  maxAgeMs: z.number().positive(),
  /**
   * Segment file size at which a new segment is started; also the granularity of drops for size.
   * Default maxBytes/16 within [4 KiB, 16 MiB]; at most maxBytes/2.
   */
  segmentBytes: z.int().min(1024).optional(),
});
export type OutboxLimits = z.input<typeof OutboxLimitsSchema>;

export interface OutboxOptions extends OutboxLimits {
  logger?: Logger;
  /**
   * Longest a journal write may block the event loop, ms (see outbox/inline-writes.ts); 0 = all writes on
   * the I/O thread pool. Default 4.
   */
  inlineWriteBudgetMs?: number;
  /** Wall clock in epoch ms (enqueuedAt, age bound); a seam for tests. */
  now?: () => number;
}

export interface OutboxStats {
  /** Entries journaled and not yet acknowledged or dropped. */
  pending: number;
  /** Bytes of the journal's files. */
  bytes: number;
  /** Counted since open. */
  droppedForSize: number;
  droppedForAge: number;
  /** Appends that failed (not durable, the promise rejected). */
  droppedOnError: number;
  /** Corrupt records or regions skipped. */
  corrupt: number;
  /** Age of the oldest pending entry, ms. */
  oldestAgeMs: number | null;
  segments: number;
  /** Group commits (one durable write each) since open. */
  commits: number;
  /** Whether writes currently run on the event loop (else on the I/O thread pool). */
  inlineWrites: boolean;
  /** Inline writes that took longer than the budget (each moved writes to the thread pool for a while). */
  inlineWriteOverruns: number;
}

interface QueuedAppend {
  entry: OutboxEntry<any>;
  frame: Buffer;
  resolve: (entry: OutboxEntry<any>) => void;
  reject: (error: OutboxError) => void;
}

/** Before this instant (2024-01-01) a device clock is taken as not yet set. */
const PLAUSIBLE_EPOCH_MS = Date.UTC(2024, 0, 1);
/** A drop or write-failure episode ends after this long without one; long episodes are re-logged this often. */
const EPISODE_QUIET_MS = 30_000;
const EPISODE_RELOG_MS = 60_000;
const COMPACT_SUFFIX = '.compact';
/** Removals are written at most this long after ack(), usually together with the next commit. */
const REMOVAL_WRITE_DELAY_MS = 20;
/**
 * Segments are opened O_DSYNC where the platform has it: each write returns once durable, one system
 * call instead of write + fdatasync (same guarantee). Elsewhere an explicit fdatasync follows the write.
 */
const O_DSYNC: number = fsConstants.O_DSYNC ?? 0;
const DEFAULT_INLINE_WRITE_BUDGET_MS = 4;
/** Write errors after which the file is known to be as it was (nothing half-synced): keep appending to it. */
const CLEAN_WRITE_ERRORS = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);
const SEGMENT_FILE = new RegExp(`^(\\d{${SEGMENT_DIGITS}})\\.log$`);
const ACK_FILE = new RegExp(`^(\\d{${SEGMENT_DIGITS}})\\.ack$`);

interface Episode {
  startedAt: number;
  lastAt: number;
  loggedAt: number;
  counts: Record<string, number>;
}

export class Outbox<T = unknown> {
  /** Ascending by base id; the last one is the tail, the only one appended to. */
  private segments: Segment[] = [];
  private nextId = 1;
  private appendQueue: QueuedAppend[] = [];
  private ackWaiters: (() => void)[] = [];
  /** Segments with removals queued for their ack file. */
  private dirty = new Set<Segment>();
  private flushScheduled = false;
  private removalTimer: NodeJS.Timeout | null = null;
  private lane: Promise<void> = Promise.resolve();
  private closed = false;
  private finished = false;
  private closing: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private readonly counters = { droppedForSize: 0, droppedForAge: 0, droppedOnError: 0, corrupt: 0, commits: 0 };
  private dropEpisode: Episode | null = null;
  private errorEpisode: Episode | null = null;
  /** Removal writes failed since the last one that worked (logged once per run of failures). */
  private removalWriteFailures = 0;
  /** Writes were moved to the thread pool after an overrun (for the log line when they come back). */
  private pooledWrites = false;
  private readonly maxEntryBytes: number;

  private constructor(
    readonly dir: string,
    private readonly lock: DirLock,
    private readonly maxBytes: number,
    private readonly maxAgeMs: number,
    readonly segmentBytes: number,
    private readonly logger: Logger,
    private readonly now: () => number,
    private readonly writes: InlineWritePolicy,
  ) {
    this.maxEntryBytes = Math.floor(maxBytes / 2);
  }

  static async open<T = unknown>(dir: string, options: OutboxOptions): Promise<Outbox<T>> {
    const parsed = OutboxLimitsSchema.safeParse({ maxBytes: options.maxBytes, maxAgeMs: options.maxAgeMs, segmentBytes: options.segmentBytes });
    if (!parsed.success) throw new OutboxError('invalid', `outbox options: ${z.prettifyError(parsed.error)}`);
    const { maxBytes, maxAgeMs } = parsed.data;
    const segmentBytes = parsed.data.segmentBytes ?? Math.min(16 << 20, Math.max(4096, Math.floor(maxBytes / 16)), Math.floor(maxBytes / 2));
    if (segmentBytes > maxBytes / 2) throw new OutboxError('invalid', `outbox options: segmentBytes ${segmentBytes} exceeds maxBytes/2 (${maxBytes / 2})`);
    const logger = options.logger ?? pino({ enabled: false });
    let root: string;
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      root = await realpath(dir);
    } catch (e) {
      throw new OutboxError('io', `outbox: cannot create folder ${dir}: ${describeCause(e)}`, { file: dir, cause: e });
    }
    const lock = await DirLock.acquire(root, logger);
    const writes = new InlineWritePolicy({ budgetMs: options.inlineWriteBudgetMs ?? DEFAULT_INLINE_WRITE_BUDGET_MS });
    const outbox = new Outbox<T>(root, lock, maxBytes, maxAgeMs, segmentBytes, logger, options.now ?? Date.now, writes);
    try {
      await outbox.onLane(() => outbox.recover());
    } catch (e) {
      await outbox.closeHandles();
      await lock.release();
      if (e instanceof OutboxError) throw e;
      throw new OutboxError('io', `outbox: cannot open ${root}: ${describeCause(e)}`, { file: root, cause: e });
    }
    outbox.timer = setInterval(() => outbox.tick(), Math.min(1000, Math.max(10, maxAgeMs / 4)));
    outbox.timer.unref();
    return outbox;
  }

  /** Journals an entry; resolves once it is durable (rejects with OutboxError when it cannot be made so). */
  append(topic: string, payload: T): Promise<OutboxEntry<T>> {
    if (this.closed) return Promise.reject(new OutboxError('closed', `outbox ${this.dir} is closed`));
    if (typeof topic !== 'string' || topic.length === 0 || Buffer.byteLength(topic) > MAX_TOPIC_BYTES) {
      return Promise.reject(new OutboxError('invalid', `outbox: topic must be a non-empty string of at most ${MAX_TOPIC_BYTES} bytes`));
    }
    let json: string | undefined;
    try {
      json = JSON.stringify(payload);
    } catch (e) {
      return Promise.reject(new OutboxError('invalid', `outbox: payload is not JSON-serialisable: ${describeCause(e)}`, { cause: e }));
    }
    if (json === undefined) return Promise.reject(new OutboxError('invalid', 'outbox: payload is not JSON-serialisable (undefined or a function)'));
    const bytes = entryFrameBytes(Buffer.byteLength(topic), Buffer.byteLength(json));
    if (bytes > this.maxEntryBytes) {
      this.counters.droppedOnError++;
      return Promise.reject(new OutboxError('too-large', `outbox: entry of ${bytes} bytes exceeds the limit of ${this.maxEntryBytes} (maxBytes/2)`));
    }
    const entry: OutboxEntry<T> = { id: this.nextId++, topic, payload, enqueuedAt: this.now() };
    const frame = encodeEntry(entry.id, entry.enqueuedAt, topic, json);
    return new Promise<OutboxEntry<T>>((resolve, reject) => {
      this.appendQueue.push({ entry, frame, resolve, reject });
      this.scheduleFlush();
    });
  }

  /**
   * Removes an entry the broker acknowledged: at once from `pending()`, and from the journal with the next
   * commit or within 20 ms (not fsynced: see the file comment). Resolves once the removal was written (or,
   * if that failed, queued again for the next commit). Unknown, already removed or dropped ids are ignored,
   * and so is an ack after close (the entry stays pending for the next run).
   */
  ack(id: number): Promise<void> {
    if (this.closed) return Promise.resolve();
    const at = this.locate(id);
    if (!at) return Promise.resolve();
    at.segment.remove(at.index, 'acked');
    this.dirty.add(at.segment);
    return new Promise<void>((resolve) => {
      this.ackWaiters.push(resolve);
      this.scheduleRemovalWrite();
    });
  }

  /**
   * Pending entries in id order, read back from the journal: those with id > `afterId`, at most `limit`
   * of them. After open, these are everything the previous process left unacknowledged. Page through a
   * large backlog with `afterId` (or use `replay()`) rather than loading it whole.
   */
  pending(options: { afterId?: number; limit?: number } = {}): Promise<OutboxEntry<T>[]> {
    if (this.closed) return Promise.reject(new OutboxError('closed', `outbox ${this.dir} is closed`));
    const afterId = options.afterId ?? 0;
    const limit = options.limit ?? Infinity;
    this.sweepAge();
    return this.onLane(() => this.readPending(afterId, limit));
  }

  /** All pending entries in id order, read `batch` at a time. */
  async *replay(batch = 256): AsyncGenerator<OutboxEntry<T>> {
    let afterId = 0;
    for (;;) {
      const page = await this.pending({ afterId, limit: batch });
      if (page.length === 0) return;
      yield* page;
      afterId = page[page.length - 1].id;
    }
  }

  stats(): OutboxStats {
    if (!this.finished) this.sweepAge();
    let pending = 0;
    let bytes = 0;
    for (const s of this.segments) {
      pending += s.live;
      bytes += s.size + s.ackSize;
    }
    const oldest = this.oldestLive();
    return {
      pending,
      bytes,
      ...this.counters,
      oldestAgeMs: oldest === null ? null : Math.max(0, this.now() - oldest),
      segments: this.segments.length,
      inlineWrites: this.writes.inline(),
      inlineWriteOverruns: this.writes.overruns,
    };
  }

  /** Commits what was appended before, writes queued removals, syncs and releases the folder. */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    if (this.removalTimer) clearTimeout(this.removalTimer);
    this.closing = this.onLane(async () => {
      await this.flush();
      this.finished = true;
      // A clean shutdown makes the removals durable too (ack files created since open included).
      for (const s of this.segments) {
        if (s.ackHandle) await s.ackHandle.datasync().catch((e) => this.logger.warn({ file: s.ackPath, err: describeCause(e) }, 'outbox: cannot sync ack file'));
      }
      await syncDir(this.dir).catch((e) => this.logger.warn({ dir: this.dir, err: describeCause(e) }, 'outbox: cannot sync folder'));
      this.endEpisodes(true);
    }).finally(async () => {
      this.finished = true;
      await this.closeHandles();
      await this.lock.release();
    });
    return this.closing;
  }

  // ---- recovery --------------------------------------------------------------------------------------

  private async recover(): Promise<void> {
    const names = await readdir(this.dir);
    const bases: number[] = [];
    const ackBases = new Set<number>();
    for (const name of names) {
      const seg = SEGMENT_FILE.exec(name);
      const ack = ACK_FILE.exec(name);
      if (seg) bases.push(Number(seg[1]));
      else if (ack) ackBases.add(Number(ack[1]));
      else if (name.endsWith(COMPACT_SUFFIX)) {
        this.logger.info({ file: join(this.dir, name) }, 'outbox: removing an interrupted compaction');
        await unlink(join(this.dir, name)).catch(() => {});
      }
    }
    bases.sort((a, b) => a - b);
    for (const base of ackBases) {
      if (!bases.includes(base)) await unlink(this.ackPath(base)).catch(() => {});
    }
    let lastId = 0;
    for (const base of bases) {
      const segment = new Segment(base, join(this.dir, segmentName(base)), this.ackPath(base));
      lastId = await this.loadSegment(segment, lastId);
      if (ackBases.has(base)) await this.loadAcks(segment);
      this.segments.push(segment);
    }
    const tail = this.tail;
    this.nextId = Math.max(lastId + 1, tail ? tail.base : 1);
    if (tail && !tail.broken) {
      tail.handle = await open(tail.path, fsConstants.O_RDWR | O_DSYNC);
    }
    const dead = this.segments.filter((s) => s !== this.tail && s.live === 0);
    if (dead.length) await this.deleteSegments(dead);
    if (!this.tail) await this.createSegment(this.nextId);
    this.sweepAge();
    if (this.dirty.size) {
      await this.writeRemovals();
      await this.deleteDeadSegments();
    }
    const stats = this.stats();
    this.logger.info({ dir: this.dir, pending: stats.pending, bytes: stats.bytes, segments: stats.segments, nextId: this.nextId }, 'outbox opened');
  }

  /** Indexes a segment's entries, skipping corrupt ones and truncating a torn tail. Returns the last id. */
  private async loadSegment(segment: Segment, lastId: number): Promise<number> {
    const buf = await readFile(segment.path);
    const scan = scanFrames(buf);
    for (const bad of scan.corrupt) {
      this.counters.corrupt++;
      this.logger.warn({ file: segment.path, offset: bad.offset, bytes: bad.bytes }, 'outbox: skipped a corrupt record (checksum mismatch); the records after it are kept');
    }
    for (const { offset, end } of scan.frames) {
      const header = readEntryHeader(buf, offset, end);
      if (!header) {
        this.counters.corrupt++;
        this.logger.warn({ file: segment.path, offset }, 'outbox: skipped a record that is not a valid entry');
        continue;
      }
      if (header.id <= lastId || header.id < segment.base) {
        this.counters.corrupt++;
        this.logger.warn({ file: segment.path, offset, id: header.id, after: lastId }, 'outbox: skipped an entry whose id is out of order');
        continue;
      }
      segment.push(header.id, offset, end - offset, header.enqueuedAt);
      lastId = header.id;
    }
    segment.size = scan.validEnd;
    if (scan.validEnd < buf.length) {
      this.logger.warn(
        { file: segment.path, offset: scan.validEnd, bytes: buf.length - scan.validEnd },
        'outbox: truncating a torn or unreadable tail (an append interrupted before it was acknowledged)',
      );
      await this.truncateDurably(segment.path, scan.validEnd);
    }
    return lastId;
  }

  private async loadAcks(segment: Segment): Promise<void> {
    const buf = await readFile(segment.ackPath);
    const scan = scanFrames(buf);
    for (const bad of scan.corrupt) {
      this.logger.warn({ file: segment.ackPath, offset: bad.offset, bytes: bad.bytes }, 'outbox: skipped a corrupt ack record (its entries will be published again)');
    }
    for (const { offset, end } of scan.frames) {
      const removal = readRemoval(buf, offset, end);
      if (!removal) continue;
      for (const id of removal.ids) {
        const i = segment.indexOf(id);
        if (i >= 0) segment.remove(i);
      }
    }
    segment.ackSize = scan.validEnd;
    if (scan.validEnd < buf.length) await this.truncateDurably(segment.ackPath, scan.validEnd);
  }

  private async truncateDurably(path: string, size: number): Promise<void> {
    const handle = await open(path, 'r+');
    try {
      await handle.truncate(size);
      await handle.datasync();
    } finally {
      await handle.close();
    }
  }

  // ---- the commit lane -------------------------------------------------------------------------------

  private onLane<R>(task: () => Promise<R>): Promise<R> {
    const run = this.lane.then(task);
    this.lane = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // setImmediate, not a microtask: every append of this event-loop turn joins the same commit.
    setImmediate(() => {
      this.onLane(() => this.flush()).catch((e) => this.logger.error({ err: describeCause(e) }, 'outbox: unexpected failure in commit'));
    });
  }

  /** Removals need no fsync and no hurry: they ride along with the next commit, or go after a short delay. */
  private scheduleRemovalWrite(): void {
    if (this.flushScheduled || this.removalTimer) return;
    this.removalTimer = setTimeout(() => {
      this.removalTimer = null;
      this.scheduleFlush();
    }, REMOVAL_WRITE_DELAY_MS);
  }

  private async flush(): Promise<void> {
    this.flushScheduled = false;
    if (this.removalTimer) {
      clearTimeout(this.removalTimer);
      this.removalTimer = null;
    }
    if (this.finished) return;
    this.sweepAge();
    const batch = this.appendQueue;
    this.appendQueue = [];
    let done = 0;
    try {
      while (done < batch.length) done += await this.commitChunk(batch, done);
    } catch (e) {
      // commitChunk settles its own entries; this is a bug guard so no append is left hanging.
      const error = new OutboxError('io', `outbox: commit failed: ${describeCause(e)}`, { cause: e });
      for (const q of batch.slice(done)) q.reject(error);
      this.counters.droppedOnError += batch.length - done;
    }
    const waiters = this.ackWaiters;
    this.ackWaiters = [];
    // Deleting first frees space (a full disk) and leaves fewer removals to write.
    await this.deleteDeadSegments();
    await this.writeRemovals();
    for (const w of waiters) w();
    this.endEpisodes(false);
  }

  /** Commits the longest run of `batch` from `start` that fits the tail segment; returns how many. */
  private async commitChunk(batch: QueuedAppend[], start: number): Promise<number> {
    let tail = this.tail!;
    const roll = tail.broken || !tail.handle || (tail.size > 0 && tail.size + batch[start].frame.length > this.segmentBytes);
    const capacity = this.segmentBytes - (roll ? 0 : tail.size);
    let end = start;
    let bytes = 0;
    while (end < batch.length && (end === start || bytes + batch[end].frame.length <= capacity)) bytes += batch[end++].frame.length;
    const chunk = batch.slice(start, end);
    let file = tail.path;
    try {
      if (roll) {
        file = join(this.dir, segmentName(chunk[0].entry.id));
        tail = await this.createSegment(chunk[0].entry.id);
      }
      await this.makeRoom(bytes);
      file = tail.path;
      await this.writeChunk(tail, chunk, bytes);
    } catch (e) {
      const error = e instanceof OutboxError ? e : new OutboxError('io', `outbox: cannot make ${chunk.length} entries durable in ${file}: ${describeCause(e)}`, { file, cause: e });
      this.counters.droppedOnError += chunk.length;
      this.noteWriteFailure(error, chunk.length);
      for (const q of chunk) q.reject(error);
      return chunk.length;
    }
    this.counters.commits++;
    if (this.errorEpisode) this.endErrorEpisode();
    for (const q of chunk) q.resolve(q.entry);
    return chunk.length;
  }

  private async writeChunk(segment: Segment, chunk: QueuedAppend[], bytes: number): Promise<void> {
    const buf = chunk.length === 1 ? chunk[0].frame : Buffer.concat(chunk.map((q) => q.frame), bytes);
    const position = segment.size;
    const handle = segment.handle!;
    let stage = O_DSYNC ? 'write (O_DSYNC)' : 'write';
    try {
      // Segments are opened O_DSYNC where there is one; elsewhere the write needs its own fdatasync.
      await this.writeAt(handle, buf, position, segment.path, !O_DSYNC ? () => (stage = 'fdatasync') : null);
    } catch (e) {
      // Take back what may have reached the file. If that fails too, or the error may have come from the
      // sync (after a failed fsync the kernel's page state is unknown), the segment is retired and the next
      // commit starts a new one; what was committed before stays as it is.
      if (!CLEAN_WRITE_ERRORS.has((e as NodeJS.ErrnoException).code ?? '')) segment.broken = true;
      await handle.truncate(position).catch(() => {
        segment.broken = true;
      });
      throw new OutboxError('io', `outbox: cannot make ${chunk.length} entries durable: ${stage} ${segment.path} failed: ${describeCause(e)}`, {
        file: segment.path,
        cause: e,
      });
    }
    let offset = position;
    for (const q of chunk) {
      segment.push(q.entry.id, offset, q.frame.length, q.entry.enqueuedAt);
      offset += q.frame.length;
    }
    segment.size = offset;
  }

  /** Starts a new tail segment named `base`; durable (folder synced) when it resolves. */
  private async createSegment(base: number): Promise<Segment> {
    const previous = this.tail;
    const segment = new Segment(base, join(this.dir, segmentName(base)), this.ackPath(base));
    segment.handle = await open(segment.path, fsConstants.O_RDWR | fsConstants.O_CREAT | fsConstants.O_EXCL | O_DSYNC, 0o600);
    if (previous?.handle) {
      await previous.handle.close().catch(() => {});
      previous.handle = null;
    }
    this.segments.push(segment);
    try {
      await syncDir(this.dir);
    } catch (e) {
      segment.broken = true;
      throw new OutboxError('io', `outbox: cannot sync folder ${this.dir} after creating ${segment.path}: ${describeCause(e)}`, { file: this.dir, cause: e });
    }
    return segment;
  }

  // ---- bounds ----------------------------------------------------------------------------------------

  /** Frees space so that `incoming` more bytes stay within maxBytes (see the file comment for the order). */
  private async makeRoom(incoming: number): Promise<void> {
    const excess = () => this.totalBytes() + incoming - this.maxBytes;
    if (excess() <= 0) return;
    await this.deleteDeadSegments();
    if (excess() <= 0) return;
    const sealed = this.segments.slice(0, -1);
    const compactable = sealed.filter((s) => s.live > 0 && 2 * (s.size - s.liveBytes) >= s.size).sort((a, b) => b.reclaimableBytes - a.reclaimableBytes);
    for (const segment of compactable) {
      if (excess() <= 0) return;
      await this.compact(segment);
    }
    while (excess() > 0 && this.segments.length > 1) {
      const oldest = this.segments[0];
      const ids: number[] = [];
      for (let i = oldest.firstLive(); i >= 0 && i < oldest.ids.length; i++) {
        if (oldest.alive[i]) {
          ids.push(oldest.ids[i]);
          oldest.remove(i);
        }
      }
      this.counters.droppedForSize += ids.length;
      if (ids.length) this.noteDrop('size', ids.length, { firstId: ids[0], lastId: ids[ids.length - 1], file: oldest.path });
      await this.deleteSegments([oldest]);
    }
  }

  /** Drops entries older than maxAgeMs, oldest first (in memory; their records are queued). */
  private sweepAge(): void {
    const now = this.now();
    if (now < PLAUSIBLE_EPOCH_MS) return;
    const limit = now - this.maxAgeMs;
    const dropped: number[] = [];
    outer: for (const segment of this.segments) {
      for (let i = segment.firstLive(); i >= 0 && i < segment.ids.length; i++) {
        if (!segment.alive[i]) continue;
        const t = segment.times[i];
        if (t < PLAUSIBLE_EPOCH_MS) continue;
        if (t >= limit) break outer;
        dropped.push(segment.ids[i]);
        segment.remove(i, 'age');
        this.dirty.add(segment);
      }
    }
    if (dropped.length === 0) return;
    this.counters.droppedForAge += dropped.length;
    this.noteDrop('age', dropped.length, { firstId: dropped[0], lastId: dropped[dropped.length - 1], maxAgeMs: this.maxAgeMs });
    if (!this.closed) this.scheduleRemovalWrite();
  }

  private tick(): void {
    if (this.closed) return;
    const oldest = this.oldestLive();
    const now = this.now();
    if (oldest !== null && now >= PLAUSIBLE_EPOCH_MS && oldest >= PLAUSIBLE_EPOCH_MS && oldest < now - this.maxAgeMs) this.scheduleFlush();
    this.endEpisodes(false);
  }

  // ---- removal, deletion, compaction -----------------------------------------------------------------

  private async writeRemovals(): Promise<void> {
    const dirty = [...this.dirty];
    this.dirty.clear();
    for (const segment of dirty) {
      const removals = segment.removals;
      segment.removals = new Map();
      if (!this.segments.includes(segment) || (segment.live === 0 && segment !== this.tail)) continue; // about to be deleted
      const frames = [...removals].map(([reason, ids]) => encodeRemoval(reason, ids));
      if (frames.length === 0) continue;
      const buf = Buffer.concat(frames);
      try {
        segment.ackHandle ??= await open(segment.ackPath, 'a', 0o600);
        await this.writeAt(segment.ackHandle, buf, segment.ackSize, segment.ackPath, null);
        segment.ackSize += buf.length;
        if (this.removalWriteFailures) {
          this.logger.info({ failures: this.removalWriteFailures }, 'outbox: removals are recorded again');
          this.removalWriteFailures = 0;
        }
      } catch (e) {
        // The removals stand in memory and are written again with the next commit (or at close); should
        // that never work, the entries are published once more after a restart, nothing is lost.
        if (this.removalWriteFailures++ === 0) {
          this.logger.warn({ file: segment.ackPath, err: describeCause(e) }, 'outbox: cannot record removals (the entries may be published again after a restart)');
        }
        if (segment.ackHandle) await segment.ackHandle.truncate(segment.ackSize).catch(() => {});
        for (const [reason, ids] of removals) {
          const queued = segment.removals.get(reason);
          segment.removals.set(reason, queued ? [...ids, ...queued] : ids);
        }
        this.dirty.add(segment);
      }
    }
  }

  /**
   * Writes all of `bytes` at `position` of `file`, on the event loop or the I/O thread pool as the write
   * policy says (inline writes are timed against its budget). With `beforeDataSync`, an fdatasync follows,
   * announced first so that an error can be told from a write error.
   */
  private async writeAt(handle: FileHandle, bytes: Buffer, position: number, file: string, beforeDataSync: (() => void) | null): Promise<void> {
    if (this.writeInline()) {
      const started = performance.now();
      writeFullySync(handle, bytes, position);
      if (beforeDataSync) {
        beforeDataSync();
        fdatasyncSync(handle.fd);
      }
      this.noteInlineWrite(performance.now() - started, file);
      return;
    }
    await writeFully(handle, bytes, position);
    if (beforeDataSync) {
      beforeDataSync();
      await handle.datasync();
    }
  }

  /** Whether this write runs on the event loop; logs when inline writes resume after a back-off. */
  private writeInline(): boolean {
    const inline = this.writes.inline();
    if (inline && this.pooledWrites) {
      this.pooledWrites = false;
      this.logger.info('outbox: journal writes run on the event loop again');
    }
    return inline;
  }

  private noteInlineWrite(tookMs: number, file: string): void {
    const change = this.writes.record(tookMs);
    if (!change) return;
    this.pooledWrites = true;
    this.logger.warn(
      { file, tookMs: Math.round(tookMs * 10) / 10, overrunsInWindow: change.overrunsInWindow, budgetMs: this.writes.budgetMs },
      'outbox: journal writes block the event loop too long; they go to the I/O thread pool for a while (slow storage?)',
    );
  }

  private async deleteDeadSegments(): Promise<void> {
    const dead = this.segments.filter((s) => s !== this.tail && s.live === 0);
    if (dead.length) await this.deleteSegments(dead);
  }

  /** Deletes segments and their ack files (segment first: an orphan ack file is harmless, the reverse is not). */
  private async deleteSegments(segments: Segment[]): Promise<void> {
    for (const segment of segments) {
      const at = this.segments.indexOf(segment);
      if (at < 0) continue;
      this.segments.splice(at, 1);
      this.dirty.delete(segment);
      await this.closeSegment(segment);
      for (const path of [segment.path, segment.ackPath]) {
        await unlink(path).catch((e) => {
          if (!isMissing(e)) this.logger.error({ file: path, err: describeCause(e) }, 'outbox: cannot delete a finished segment file');
        });
      }
    }
    await syncDir(this.dir).catch((e) => this.logger.warn({ dir: this.dir, err: describeCause(e) }, 'outbox: cannot sync folder after deleting segments'));
  }

  /** Rewrites a sealed segment with only its live entries (new file renamed over the old one). */
  private async compact(segment: Segment): Promise<boolean> {
    // Queued removals are all of entries not copied: they no longer need writing. Entries acked while
    // this runs stay marked in `alive` and queue fresh records, written to the emptied ack file later.
    segment.removals = new Map();
    this.dirty.delete(segment);
    const keep: number[] = [];
    for (let i = segment.firstLive(); i >= 0 && i < segment.ids.length; i++) if (segment.alive[i]) keep.push(i);
    const tmp = segment.path + COMPACT_SUFFIX;
    const before = segment.size + segment.ackSize;
    try {
      const buf = await readFile(segment.path);
      const parts: Buffer[] = [];
      const offsets: number[] = [];
      const kept: number[] = [];
      let size = 0;
      for (const i of keep) {
        const offset = segment.offsets[i];
        if (frameEndAt(buf, offset) !== offset + segment.lengths[i]) {
          this.counters.corrupt++;
          this.logger.warn({ file: segment.path, offset, id: segment.ids[i] }, 'outbox: dropped an entry whose record went corrupt on disk');
          segment.remove(i);
          continue;
        }
        parts.push(buf.subarray(offset, offset + segment.lengths[i]));
        offsets.push(size);
        kept.push(i);
        size += segment.lengths[i];
      }
      const handle = await open(tmp, 'w', 0o600);
      try {
        await writeFully(handle, Buffer.concat(parts, size), 0);
        await handle.datasync();
      } finally {
        await handle.close();
      }
      await rename(tmp, segment.path);
      await syncDir(this.dir);
      segment.rebuild(kept, offsets);
      segment.size = size;
      if (segment.ackHandle) {
        await segment.ackHandle.close().catch(() => {});
        segment.ackHandle = null;
      }
      await truncate(segment.ackPath, 0).catch(() => {});
      segment.ackSize = 0;
      this.logger.info({ file: segment.path, entries: kept.length, bytesBefore: before, bytesAfter: size }, 'outbox: compacted a segment');
      return true;
    } catch (e) {
      await unlink(tmp).catch(() => {});
      this.logger.warn({ file: segment.path, err: describeCause(e) }, 'outbox: compaction failed');
      return false;
    }
  }

  // ---- reading ---------------------------------------------------------------------------------------

  private async readPending(afterId: number, limit: number): Promise<OutboxEntry<T>[]> {
    const out: OutboxEntry<T>[] = [];
    for (const segment of [...this.segments]) {
      if (out.length >= limit) break;
      if (segment.live === 0 || segment.lastId <= afterId) continue;
      const picks: number[] = [];
      for (let i = Math.max(segment.firstLive(), segment.indexAfter(afterId)); i >= 0 && i < segment.ids.length && out.length + picks.length < limit; i++) {
        if (segment.alive[i]) picks.push(i);
      }
      if (picks.length === 0) continue;
      const from = segment.offsets[picks[0]];
      const to = segment.offsets[picks[picks.length - 1]] + segment.lengths[picks[picks.length - 1]];
      const buf = await this.readRange(segment, from, to - from);
      for (const i of picks) {
        const start = segment.offsets[i] - from;
        const decoded = decodeEntryFrame(buf.subarray(start, start + segment.lengths[i]));
        if (!decoded || decoded.id !== segment.ids[i]) {
          this.counters.corrupt++;
          this.logger.warn({ file: segment.path, offset: segment.offsets[i], id: segment.ids[i] }, 'outbox: skipped an entry whose record went corrupt on disk');
          segment.remove(i);
          continue;
        }
        out.push({ id: decoded.id, topic: decoded.topic, payload: decoded.payload as T, enqueuedAt: decoded.enqueuedAt });
      }
    }
    return out;
  }

  private async readRange(segment: Segment, position: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    const own = segment.handle === null;
    const handle: FileHandle = segment.handle ?? (await open(segment.path, 'r'));
    try {
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(buf, done, length - done, position + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return done === length ? buf : buf.subarray(0, done);
    } finally {
      if (own) await handle.close();
    }
  }

  // ---- helpers ---------------------------------------------------------------------------------------

  private get tail(): Segment | undefined {
    return this.segments[this.segments.length - 1];
  }

  private ackPath(base: number): string {
    return join(this.dir, `${String(base).padStart(SEGMENT_DIGITS, '0')}.ack`);
  }

  private totalBytes(): number {
    let bytes = 0;
    for (const s of this.segments) bytes += s.size + s.ackSize;
    return bytes;
  }

  private oldestLive(): number | null {
    for (const s of this.segments) {
      const i = s.firstLive();
      if (i >= 0) return s.times[i];
    }
    return null;
  }

  private locate(id: number): { segment: Segment; index: number } | null {
    let lo = 0;
    let hi = this.segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.segments[mid].base <= id) lo = mid;
      else hi = mid - 1;
    }
    const segment = this.segments[lo];
    if (!segment) return null;
    const index = segment.indexOf(id);
    return index >= 0 && segment.alive[index] ? { segment, index } : null;
  }

  private async closeSegment(segment: Segment): Promise<void> {
    for (const handle of [segment.handle, segment.ackHandle]) await handle?.close().catch(() => {});
    segment.handle = null;
    segment.ackHandle = null;
  }

  private async closeHandles(): Promise<void> {
    for (const s of this.segments) await this.closeSegment(s);
  }

  // ---- episode logging -------------------------------------------------------------------------------

  private noteDrop(reason: RemovalReason, count: number, detail: Record<string, unknown>): void {
    const now = Date.now();
    const e = this.dropEpisode;
    if (!e) {
      this.dropEpisode = { startedAt: now, lastAt: now, loggedAt: now, counts: { [reason]: count } };
      this.logger.warn({ reason, dropped: count, ...detail, maxBytes: this.maxBytes, ...this.publicCounters() }, 'outbox: bound exceeded, dropping the oldest entries');
      return;
    }
    e.counts[reason] = (e.counts[reason] ?? 0) + count;
    e.lastAt = now;
    if (now - e.loggedAt >= EPISODE_RELOG_MS) {
      e.loggedAt = now;
      this.logger.warn({ droppedThisEpisode: e.counts, sinceMs: now - e.startedAt, ...this.publicCounters() }, 'outbox: still dropping the oldest entries');
    }
  }

  private noteWriteFailure(error: OutboxError, count: number): void {
    const now = Date.now();
    const e = this.errorEpisode;
    if (!e) {
      this.errorEpisode = { startedAt: now, lastAt: now, loggedAt: now, counts: { failed: count } };
      this.logger.error({ file: error.file, code: error.code, failed: count, err: error.message }, 'outbox: cannot journal entries (not durable, appends rejected)');
      return;
    }
    e.counts.failed += count;
    e.lastAt = now;
    if (now - e.loggedAt >= EPISODE_RELOG_MS) {
      e.loggedAt = now;
      this.logger.error({ file: error.file, code: error.code, failedThisEpisode: e.counts.failed, err: error.message }, 'outbox: still cannot journal entries');
    }
  }

  private endErrorEpisode(): void {
    const e = this.errorEpisode!;
    this.errorEpisode = null;
    this.logger.warn({ failed: e.counts.failed, durationMs: Date.now() - e.startedAt }, 'outbox: journaling works again');
  }

  private endEpisodes(force: boolean): void {
    const now = Date.now();
    const e = this.dropEpisode;
    if (e && (force || now - e.lastAt >= EPISODE_QUIET_MS)) {
      this.dropEpisode = null;
      this.logger.warn({ droppedThisEpisode: e.counts, durationMs: e.lastAt - e.startedAt, ...this.publicCounters() }, 'outbox: dropping episode over');
    }
  }

  private publicCounters() {
    const { droppedForSize, droppedForAge, droppedOnError } = this.counters;
    return { droppedForSize, droppedForAge, droppedOnError };
  }
}
