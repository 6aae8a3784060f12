/**
 * One process per outbox folder: a `LOCK` file holding the owner's pid, boot id and process start time.
 * A lock is stale — and taken over — when the machine rebooted since (boot id differs), when the pid is
 * gone, or when the pid now belongs to another process (start time differs: pids are reused, quickly so
 * on a small device restarted by a power cut). Without /proc only the pid check is made.
 *
 * Creation is `open(O_CREAT | O_EXCL)`, so two starters cannot both create it. Taking over a stale lock
 * (unlink, then create) leaves one narrow race: two processes that find the same stale lock at the same
 * instant. One agent per folder is the deployment (systemd unit), so this is accepted.
 */
import { readFileSync } from 'node:fs';
import { open, readFile, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { OutboxError, describeCause } from './errors.js';

export const LOCK_FILE = 'LOCK';

interface LockOwner {
  pid: number;
  bootId: string | null;
  startTime: string | null;
  hostname: string;
  since: string;
}

/** Folders locked by this process (resolved paths). */
const held = new Set<string>();

function bootId(): string | null {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || null;
  } catch {
    return null;
  }
}

/** Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or null. */
function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function parseOwner(text: string): LockOwner | null {
  try {
    const o = JSON.parse(text) as Partial<LockOwner>;
    return Number.isSafeInteger(o.pid) && (o.pid as number) > 0 ? (o as LockOwner) : null;
  } catch {
    return null;
  }
}

/** Why the owner's lock is stale, or null when its owner is alive. */
function staleness(owner: LockOwner, dir: string): string | null {
  if (owner.pid === process.pid && held.has(dir)) return null;
  const boot = bootId();
  if (owner.bootId && boot && owner.bootId !== boot) return 'the machine was restarted since';
  if (!isAlive(owner.pid)) return `process ${owner.pid} no longer exists`;
  const start = processStartTime(owner.pid);
  if (owner.startTime && start && owner.startTime !== start) return `pid ${owner.pid} now belongs to another process`;
  if (owner.pid === process.pid) return 'left by an earlier instance in this process';
  return null;
}

async function readOwner(path: string): Promise<{ owner: LockOwner | null; missing: boolean }> {
  // A lock being written by its creator can be seen empty for a moment: look again before calling it garbage.
  for (let attempt = 0; ; attempt++) {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { owner: null, missing: true };
      throw e;
    }
    const owner = parseOwner(text);
    if (owner || attempt === 3) return { owner, missing: false };
    await new Promise((r) => setTimeout(r, 50));
  }
}

export class DirLock {
  private constructor(readonly dir: string, readonly path: string, private readonly owner: LockOwner) {}

  /** `dir` must be resolved (absolute, symlinks resolved) so that one folder has one key. */
  static async acquire(dir: string, logger: Logger): Promise<DirLock> {
    const path = join(dir, LOCK_FILE);
    const me: LockOwner = {
      pid: process.pid,
      bootId: bootId(),
      startTime: processStartTime(process.pid),
      hostname: hostname(),
      since: new Date().toISOString(),
    };
    if (held.has(dir)) throw new OutboxError('locked', `outbox ${dir} is already open in this process (pid ${process.pid})`, { file: path });
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        const handle = await open(path, 'wx', 0o644);
        try {
          await handle.writeFile(JSON.stringify(me) + '\n');
        } finally {
          await handle.close();
        }
        held.add(dir);
        return new DirLock(dir, path, me);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new OutboxError('io', `outbox: cannot create lock ${path}: ${describeCause(e)}`, { file: path, cause: e });
        }
      }
      const { owner, missing } = await readOwner(path);
      if (missing) continue;
      const why = owner ? staleness(owner, dir) : 'its content is unreadable';
      if (why === null) {
        throw new OutboxError(
          'locked',
          `outbox ${dir} is locked by pid ${owner!.pid} (host ${owner!.hostname}, since ${owner!.since}): is another agent running?`,
          { file: path },
        );
      }
      logger.warn({ lock: path, previousOwner: owner, reason: why }, 'outbox: taking over a stale lock');
      await unlink(path).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw new OutboxError('io', `outbox: cannot remove stale lock ${path}: ${describeCause(e)}`, { file: path, cause: e });
      });
    }
    throw new OutboxError('locked', `outbox ${dir}: could not take the lock ${path} (contended)`, { file: path });
  }

  async release(): Promise<void> {
    held.delete(this.dir);
    const { owner } = await readOwner(this.path).catch(() => ({ owner: null }));
    if (owner && owner.pid === this.owner.pid && owner.since === this.owner.since) await unlink(this.path).catch(() => {});
  }
}
