/**
 * Inspection sequence numbers that only ever go up, across restarts and kill -9, without a disk write per
 * part: a block of numbers is reserved on disk (atomically) before any of them is handed out, so after a
 * crash numbering resumes above everything that may have been used. Gaps after a crash are expected; a
 * repeated number never happens.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomically } from '../storage/atomic-file.js';

const FILE = 'sequence.json';

export class SequenceStore {
  private next: number;
  private reservedUpTo: number;
  private reserving: Promise<void> | null = null;

  private constructor(
    private readonly file: string,
    start: number,
    private readonly block: number,
  ) {
    this.next = start;
    this.reservedUpTo = start;
  }

  static async open(stateDir: string, block = 1000): Promise<SequenceStore> {
    await mkdir(stateDir, { recursive: true });
    const file = join(stateDir, FILE);
    let start = 0;
    try {
      const parsed = JSON.parse(await readFile(file, 'utf8')) as { reservedUpTo?: unknown };
      if (typeof parsed.reservedUpTo !== 'number' || !Number.isSafeInteger(parsed.reservedUpTo) || parsed.reservedUpTo < 0) {
        throw new Error(`${file}: "reservedUpTo" must be a whole number`);
      }
      start = parsed.reservedUpTo;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    const store = new SequenceStore(file, start, block);
    await store.reserve();
    return store;
  }

  private async reserve(): Promise<void> {
    const upTo = this.reservedUpTo + this.block;
    await writeFileAtomically(this.file, JSON.stringify({ reservedUpTo: upTo }) + '\n');
    this.reservedUpTo = upTo;
  }

  /**
   * The next number. Normally immediate: the next block is reserved in the background when half of this
   * one is used, and only if that write is still pending at the block's end does it wait. Rejects when the
   * block is used up and a new one cannot be written (the caller must still give its part a verdict).
   */
  async take(): Promise<number> {
    if (this.next >= this.reservedUpTo) await this.reserveNext();
    const seq = this.next++;
    if (!this.reserving && this.reservedUpTo - this.next < this.block / 2) {
      // In the background; a failure here is retried by the next take() that needs the block.
      this.reserveNext().catch(() => undefined);
    }
    return seq;
  }

  /** The next number without a reservation on disk (only when reserving failed: see InspectionLoop.nextSeq). */
  takeUnreserved(): number {
    return this.next++;
  }

  /** One reservation at a time: concurrent callers share it (they would write the same temp file). */
  private reserveNext(): Promise<void> {
    this.reserving ??= this.reserve().finally(() => {
      this.reserving = null;
    });
    return this.reserving;
  }
}
