/**
 * In-memory index of one segment file: where each entry's frame is, when it was enqueued, whether it is
 * still pending. Columns of plain numbers (about 40 bytes per entry), no payloads: those are read back
 * from the file when asked for.
 */
import type { FileHandle } from 'node:fs/promises';
import type { RemovalReason } from './frame.js';

export const SEGMENT_DIGITS = 16;

export function segmentName(base: number): string {
  return `${String(base).padStart(SEGMENT_DIGITS, '0')}.log`;
}

export class Segment {
  /** Entry ids, strictly increasing; `offsets`/`lengths` locate their frames, `times` their enqueuedAt. */
  ids: number[] = [];
  offsets: number[] = [];
  lengths: number[] = [];
  times: number[] = [];
  alive: boolean[] = [];
  /** Live entries and the bytes of their frames. */
  live = 0;
  liveBytes = 0;
  /** No live entry before this index. */
  head = 0;
  /** Valid bytes of the segment file and of its ack file. */
  size = 0;
  ackSize = 0;
  /** Open for appending (the tail only). */
  handle: FileHandle | null = null;
  ackHandle: FileHandle | null = null;
  /** Removals not yet written to the ack file. */
  removals = new Map<RemovalReason, number[]>();
  /** A failed write or sync left it in an unknown state: never appended to again. */
  broken = false;

  constructor(readonly base: number, readonly path: string, readonly ackPath: string) {}

  get lastId(): number {
    return this.ids.length ? this.ids[this.ids.length - 1] : -1;
  }

  /** Bytes that compaction would reclaim: removed entries, skipped garbage, the ack file. */
  get reclaimableBytes(): number {
    return this.size - this.liveBytes + this.ackSize;
  }

  push(id: number, offset: number, length: number, enqueuedAt: number): void {
    this.ids.push(id);
    this.offsets.push(offset);
    this.lengths.push(length);
    this.times.push(enqueuedAt);
    this.alive.push(true);
    this.live++;
    this.liveBytes += length;
  }

  /** Index of `id`, or -1. */
  indexOf(id: number): number {
    let lo = 0;
    let hi = this.ids.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const v = this.ids[mid];
      if (v === id) return mid;
      if (v < id) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  /** First index with id > `id`. */
  indexAfter(id: number): number {
    let lo = 0;
    let hi = this.ids.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ids[mid] <= id) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Index of the oldest live entry, or -1. */
  firstLive(): number {
    while (this.head < this.ids.length && !this.alive[this.head]) this.head++;
    return this.head < this.ids.length ? this.head : -1;
  }

  /** Marks entry `i` removed; `reason` queues a record for the ack file (none: nothing is written). */
  remove(i: number, reason?: RemovalReason): void {
    if (!this.alive[i]) return;
    this.alive[i] = false;
    this.live--;
    this.liveBytes -= this.lengths[i];
    if (reason) {
      const ids = this.removals.get(reason);
      if (ids) ids.push(this.ids[i]);
      else this.removals.set(reason, [this.ids[i]]);
    }
  }

  /** Keeps only the entries listed (old indices), at their new offsets. */
  rebuild(keep: number[], newOffsets: number[]): void {
    const pick = <V>(column: V[]) => keep.map((i) => column[i]);
    const alive = pick(this.alive);
    this.ids = pick(this.ids);
    this.lengths = pick(this.lengths);
    this.times = pick(this.times);
    this.alive = alive;
    this.offsets = newOffsets;
    this.live = 0;
    this.liveBytes = 0;
    for (let k = 0; k < alive.length; k++) {
      if (alive[k]) {
        this.live++;
        this.liveBytes += this.lengths[k];
      }
    }
    this.head = 0;
  }
}
