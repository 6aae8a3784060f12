/** The few file primitives the outbox's durability rests on. */
import { writeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';

/** Writes all of `bytes` at `position` (a short write is continued, never silently accepted). */
export async function writeFully(handle: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, done, bytes.length - done, position + done);
    if (bytesWritten <= 0) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
    done += bytesWritten;
  }
}

/** writeFully on the calling thread (see inline-writes.ts for when that is worth it). */
export function writeFullySync(handle: FileHandle, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) {
    const written = writeSync(handle.fd, bytes, done, bytes.length - done, position + done);
    if (written <= 0) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
    done += written;
  }
}

/** Makes a folder's entries (files created, renamed, deleted) durable. */
export async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } catch (e) {
    // Some file systems cannot fsync a directory; there is nothing more to do on those.
    if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
  } finally {
    await handle.close();
  }
}

export function isMissing(e: unknown): boolean {
  return (e as NodeJS.ErrnoException)?.code === 'ENOENT';
}
