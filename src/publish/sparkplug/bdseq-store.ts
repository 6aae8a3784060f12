/**
 * Where an edge node remembers the last birth/death sequence number (bdSeq) it registered with the broker,
 * so a restarted agent continues with the next value instead of repeating one a host may still hold for
 * the previous session. A small JSON file, replaced atomically (temporary sibling, fsync, rename); its
 * folder is created if missing.
 */
import { readFile } from 'node:fs/promises';
import { writeFileAtomically } from '../../storage/atomic-file.js';

interface StateFile {
  bdSeq: number;
  updatedAt: string;
}

/** Sparkplug 3.0: bdSeq counts 0..255 and wraps. */
export function nextBdSeq(previous: number | null): number {
  return previous === null ? 0 : (previous + 1) % 256;
}

export class BdSeqStore {
  /** Writes run one after another: they share the temporary file name, and the last one must win. */
  private writing: Promise<void> = Promise.resolve();

  constructor(readonly file: string) {}

  /** The last bdSeq written; null when there is no file yet. Throws when the file exists but is not ours. */
  async read(): Promise<number | null> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    let state: Partial<StateFile> | null;
    try {
      state = JSON.parse(text) as Partial<StateFile> | null;
    } catch {
      throw new Error(`${this.file}: not JSON`);
    }
    const bdSeq = state?.bdSeq;
    if (typeof bdSeq !== 'number' || !Number.isInteger(bdSeq) || bdSeq < 0 || bdSeq > 255) {
      throw new Error(`${this.file}: bdSeq must be an integer in 0..255, got ${JSON.stringify(bdSeq)}`);
    }
    return bdSeq;
  }

  /** Durably replaces the file; a crash leaves either the old or the new content, never a torn one. */
  write(bdSeq: number): Promise<void> {
    const done = this.writing.then(() => this.replace(bdSeq));
    this.writing = done.catch(() => {});
    return done;
  }

  private async replace(bdSeq: number): Promise<void> {
    const state: StateFile = { bdSeq, updatedAt: new Date().toISOString() };
    await writeFileAtomically(this.file, JSON.stringify(state) + '\n');
  }
}
