/**
 * The outbox (src/publish/outbox.ts) on real files in temp folders: order, acks, restarts, bounds, torn
 * and corrupt records, SIGKILL of a child process mid-run, a real full disk (tmpfs, when mountable) and
 * the folder lock.
 */
import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import { appendFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { Outbox, OutboxError, type OutboxEntry, type OutboxOptions } from '../src/publish/outbox.js';
import { crc32, crc32Portable } from '../src/publish/outbox/crc32.js';
import { MAGIC } from '../src/publish/outbox/frame.js';
import { InlineWritePolicy } from '../src/publish/outbox/inline-writes.js';
import { untilNotified } from './support/wait.js';

const REPO = resolve(fileURLToPath(import.meta.url), '../..');
const OUTBOX_MODULE = pathToFileURL(join(REPO, 'src/publish/outbox.ts')).href;

const dirs: string[] = [];
const children: ChildProcess[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'ast-outbox-'));
  dirs.push(dir);
  return dir;
}
afterEach(() => {
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}
function capture() {
  const lines: LogLine[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { logger, lines, find: (re: RegExp) => lines.filter((l) => re.test(l.msg)) };
}

const ONE_HOUR = 3_600_000;
/**
 * Journal writes run on the event loop while they are fast and on the I/O thread pool otherwise
 * (outbox/inline-writes.ts); the tests run for both paths pin one. The event-loop budget is generous so
 * that a test machine under load (a write preempted for 40 ms) cannot move them to the pool.
 */
let writeBudgetMs: number | undefined;
const WRITE_PATHS = [
  ['event-loop writes', 100],
  ['thread-pool writes', 0],
] as const;
async function openBox<T = unknown>(dir: string, options: Partial<OutboxOptions> = {}): Promise<Outbox<T>> {
  const budget = writeBudgetMs === undefined ? {} : { inlineWriteBudgetMs: writeBudgetMs };
  return Outbox.open<T>(dir, { maxBytes: 1 << 20, maxAgeMs: ONE_HOUR, ...budget, ...options });
}

const ids = (entries: OutboxEntry[]) => entries.map((e) => e.id);
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const segmentFiles = (dir: string) => readdirSync(dir).filter((n) => n.endsWith('.log')).sort();
/** A result-like payload whose JSON is about 400 bytes. */
const result = (n: number) => ({ seq: n, station: 'line-3/cam-1', partId: `P-${n}`, capturedAt: new Date(1_790_000_000_000 + n).toISOString(), score: 0.125, normalizedScore: 0.5, threshold: 1.5, verdict: 'pass', latencyMs: 12.5, model: { id: 'ast-edge', version: '1.0.0' }, note: 'x'.repeat(190) });

/** Offsets of the frames in a segment file (the magic only starts frames in these tests' files). */
function frameOffsets(file: string): number[] {
  const buf = readFileSync(file);
  const out: number[] = [];
  for (let at = buf.indexOf(MAGIC); at >= 0; at = buf.indexOf(MAGIC, at + 1)) out.push(at);
  return out;
}

describe.each(WRITE_PATHS)('outbox: journal basics (%s)', (_, budget) => {
  beforeAll(() => void (writeBudgetMs = budget));
  afterAll(() => void (writeBudgetMs = undefined));

  test('writes on the path chosen: stats say which', async () => {
    const box = await openBox(tempDir());
    await box.append('t', { n: 1 });
    expect(box.stats().inlineWrites).toBe(budget > 0);
    if (budget === 0) expect(box.stats().inlineWriteOverruns).toBe(0); // pool writes are never timed against a budget
    await box.close();
  });

  test('appends resolve in id order, share one commit per tick, and pending lists them in order', async () => {
    const dir = tempDir();
    const box = await openBox(dir);
    const entries = await Promise.all(range(1, 20).map((n) => box.append('ast/line3/result', result(n))));
    expect(ids(entries)).toEqual(range(1, 20));
    expect(box.stats()).toMatchObject({ pending: 20, commits: 1, droppedOnError: 0 });
    const pending = await box.pending();
    expect(ids(pending)).toEqual(range(1, 20));
    expect(pending[4]).toEqual({ id: 5, topic: 'ast/line3/result', payload: result(5), enqueuedAt: entries[4].enqueuedAt });
    await box.ack(1);
    await box.ack(2);
    expect(ids(await box.pending())).toEqual(range(3, 20));
    expect(ids(await box.pending({ afterId: 10, limit: 4 }))).toEqual([11, 12, 13, 14]);
    const replayed: number[] = [];
    for await (const e of box.replay(7)) replayed.push(e.id);
    expect(replayed).toEqual(range(3, 20));
    await box.close();
  });

  test('reopen keeps the unacked, forgets the acked, and ids stay monotonic even when all was acked', async () => {
    const dir = tempDir();
    let box = await openBox(dir);
    await Promise.all(range(1, 10).map((n) => box.append('t', { n })));
    await Promise.all([2, 4, 6].map((id) => box.ack(id)));
    await box.close();

    box = await openBox(dir);
    const pending = await box.pending();
    expect(ids(pending)).toEqual([1, 3, 5, 7, 8, 9, 10]);
    expect(pending.map((e) => (e.payload as { n: number }).n)).toEqual([1, 3, 5, 7, 8, 9, 10]);
    expect((await box.append('t', { n: 11 })).id).toBe(11);
    await Promise.all((await box.pending()).map((e) => box.ack(e.id)));
    expect(box.stats().pending).toBe(0);
    await box.close();

    box = await openBox(dir);
    expect(await box.pending()).toEqual([]);
    expect((await box.append('t', { n: 12 })).id).toBe(12);
    await box.close();
    box = await openBox(dir);
    expect(ids(await box.pending())).toEqual([12]);
    await box.close();
  });

  test('out-of-order acks across segments; a segment is deleted once all its entries are acked', async () => {
    const dir = tempDir();
    let box = await openBox(dir, { segmentBytes: 1024 });
    for (let n = 1; n <= 60; n++) await box.append('t', { n, pad: 'p'.repeat(40) });
    const segments = segmentFiles(dir);
    expect(segments.length).toBeGreaterThan(4);
    const firstSegmentEnd = Number(segments[1].slice(0, 16)) - 1;
    // A fixed shuffle: acked in a scrambled order, the first segment's entries last of all.
    let seed = 7;
    const order = range(firstSegmentEnd + 1, 60).sort(() => ((seed = (seed * 48271) % 2147483647) / 2147483647 < 0.5 ? -1 : 1));
    const acked = new Set(order.slice(0, 30));
    await Promise.all(order.slice(0, 30).map((id) => box.ack(id))); // marked in this order, written together
    await box.ack(9999); // unknown ids are ignored
    await box.ack(order[0]); // and so are repeated acks
    expect(ids(await box.pending())).toEqual(range(1, 60).filter((id) => !acked.has(id)));
    await box.close();

    box = await openBox(dir, { segmentBytes: 1024 });
    expect(ids(await box.pending())).toEqual(range(1, 60).filter((id) => !acked.has(id)));
    await Promise.all(range(1, firstSegmentEnd).reverse().map((id) => box.ack(id)));
    expect(segmentFiles(dir)).not.toContain(segments[0]);
    expect(existsSync(join(dir, segments[0].replace('.log', '.ack')))).toBe(false);
    await Promise.all(order.slice(30).map((id) => box.ack(id)));
    expect(box.stats().pending).toBe(0);
    expect(segmentFiles(dir).length).toBe(1); // the tail is kept: its name carries the next id
    await box.close();
    box = await openBox(dir, { segmentBytes: 1024 });
    expect((await box.append('t', {})).id).toBe(61);
    await box.close();
  });

  test('rejects what cannot be journaled, and appends after close', async () => {
    const dir = tempDir();
    const box = await openBox(dir, { maxBytes: 64 * 1024 });
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    await expect(box.append('t', cyclic)).rejects.toMatchObject({ name: 'OutboxError', kind: 'invalid' });
    await expect(box.append('t', undefined)).rejects.toMatchObject({ kind: 'invalid' });
    await expect(box.append('', {})).rejects.toMatchObject({ kind: 'invalid' });
    await expect(box.append('t', { big: 'x'.repeat(40 * 1024) })).rejects.toMatchObject({ kind: 'too-large' });
    expect((await box.append('t', { ok: true })).id).toBeGreaterThan(0);
    await box.close();
    await expect(box.append('t', {})).rejects.toMatchObject({ kind: 'closed' });
    await expect(Outbox.open(dir, { maxBytes: 100, maxAgeMs: 1 })).rejects.toMatchObject({ kind: 'invalid' });
  });

  test('CRC-32: the portable and the native implementation agree', () => {
    const bytes = Buffer.from(JSON.stringify(result(42)));
    expect(crc32Portable(Buffer.from('123456789'))).toBe(0xcbf43926);
    expect(crc32(bytes)).toBe(crc32Portable(bytes));
    expect(crc32(bytes.subarray(10), crc32(bytes.subarray(0, 10)))).toBe(crc32Portable(bytes));
  });
});

describe('outbox: where writes run', () => {
  test('the policy: inline while writes keep within the budget; repeated overruns or one stall pool them for the back-off', () => {
    let now = 1000;
    const policy = new InlineWritePolicy({ budgetMs: 4, backoffMs: 30_000, now: () => now });
    expect(policy.inline()).toBe(true);
    expect(policy.record(3.9)).toBeNull();
    expect(policy.record(4)).toBeNull();
    // Two overruns among twenty writes: noise, stays inline.
    expect(policy.record(12)).toBeNull();
    for (let i = 0; i < 10; i++) policy.record(1);
    expect(policy.record(9)).toBeNull();
    expect(policy.inline()).toBe(true);
    // A third within the last twenty: a slow medium.
    expect(policy.record(6)).toEqual({ inline: false, tookMs: 6, overrunsInWindow: 3 });
    expect(policy.inline()).toBe(false);
    now += 29_999;
    expect(policy.inline()).toBe(false);
    now += 1;
    expect(policy.inline()).toBe(true);
    // Back inline with a clean window: one overrun is noise again, but a tenfold stall switches at once.
    expect(policy.record(6)).toBeNull();
    expect(policy.record(40.5)).toEqual({ inline: false, tookMs: 40.5, overrunsInWindow: 2 });
    expect(policy.overruns).toBe(5);
    // Overruns spread out (fewer than three in any twenty writes) never switch.
    const spread = new InlineWritePolicy({ budgetMs: 4, now: () => now });
    for (let i = 0; i < 200; i++) expect(spread.record(i % 10 === 0 ? 8 : 1)).toBeNull();
    expect(spread.inline()).toBe(true);
    expect(new InlineWritePolicy({ budgetMs: 0 }).inline()).toBe(false);
  });

  test('a write over the budget moves writes to the thread pool, says so once, and loses nothing', async () => {
    const dir = tempDir();
    const log = capture();
    // No real write takes under a nanosecond: the first inline write overruns the budget tenfold.
    let box = await openBox(dir, { inlineWriteBudgetMs: 1e-6, logger: log.logger });
    expect(box.stats().inlineWrites).toBe(true);
    await box.append('t', { n: 1 });
    expect(box.stats()).toMatchObject({ inlineWrites: false, inlineWriteOverruns: 1 });
    const slow = log.find(/block the event loop too long/);
    expect(slow).toHaveLength(1);
    expect(slow[0]).toMatchObject({ level: 40, file: expect.stringMatching(new RegExp(`^${dir}.*\\.log$`)) });
    const more = await Promise.all(range(2, 30).map((n) => box.append('t', { n })));
    expect(ids(more)).toEqual(range(2, 30));
    await box.ack(5);
    expect(box.stats().inlineWriteOverruns).toBe(1); // thread-pool writes are not timed against the budget
    await box.close();
    box = await openBox(dir);
    expect(ids(await box.pending())).toEqual(range(1, 30).filter((id) => id !== 5));
    await box.close();
  });
});

describe('outbox: bounds', () => {
  test('over maxBytes the oldest are dropped, counted and logged once; the newest are all kept', async () => {
    const dir = tempDir();
    const log = capture();
    const maxBytes = 16 * 1024;
    let box = await openBox(dir, { maxBytes, segmentBytes: 4096, logger: log.logger });
    const total = 120;
    for (let n = 1; n <= total; n += 10) {
      await Promise.all(range(n, n + 9).map((k) => box.append('t', result(k))));
      expect(box.stats().bytes).toBeLessThanOrEqual(maxBytes);
    }
    const stats = box.stats();
    const pending = ids(await box.pending());
    expect(pending.length).toBe(stats.pending);
    expect(pending).toEqual(range(total - pending.length + 1, total)); // a contiguous run of the newest
    expect(stats.droppedForSize).toBe(total - pending.length);
    expect(stats.droppedForSize).toBeGreaterThan(0);
    expect(pending.length * 450).toBeGreaterThan(maxBytes * 0.6);
    const warned = log.find(/dropping the oldest/);
    expect(warned).toHaveLength(1);
    expect(warned[0]).toMatchObject({ reason: 'size', firstId: 1 });
    await box.close();
    box = await openBox(dir, { maxBytes, segmentBytes: 4096 });
    expect(ids(await box.pending())).toEqual(pending);
    await box.close();
  });

  test('under size pressure, segments pinned by a few unacked entries are compacted instead of dropping', async () => {
    const dir = tempDir();
    const log = capture();
    const options = { maxBytes: 16 * 1024, segmentBytes: 4096, logger: log.logger };
    let box = await openBox(dir, options);
    for (let n = 1; n <= 27; n++) await box.append('t', result(n));
    const pinned = [2, 12];
    await Promise.all(range(1, 27).filter((id) => !pinned.includes(id)).map((id) => box.ack(id)));
    for (let n = 28; n <= 55; n++) await box.append('t', result(n));
    const stats = box.stats();
    expect(stats.droppedForSize).toBe(0);
    expect(stats.bytes).toBeLessThanOrEqual(options.maxBytes);
    expect(log.find(/compacted a segment/).length).toBeGreaterThan(0);
    const expected = [...pinned, ...range(28, 55)];
    expect(ids(await box.pending())).toEqual(expected);
    await box.ack(12);
    await box.close();
    box = await openBox(dir, options);
    const pending = await box.pending();
    expect(ids(pending)).toEqual(expected.filter((id) => id !== 12));
    expect(pending[0].payload).toEqual(result(2));
    expect(box.stats().corrupt).toBe(0);
    await box.close();
  });

  test('model check: random appends, out-of-order acks and reopens under a tight bound (compaction, drops)', async () => {
    let compactions = 0;
    for (let seed = 1; seed <= 5; seed++) {
      let state = seed * 7919;
      const random = () => (state = (state * 48271) % 2147483647) / 2147483647;
      const dir = tempDir();
      const logger = pino({ level: 'info' }, { write: (s: string) => void (compactions += Number(s.includes('compacted a segment'))) });
      const options = { maxBytes: 16 * 1024 + Math.floor(random() * 16 * 1024), segmentBytes: 1024 + Math.floor(random() * 3 * 1024), logger };
      let box = await openBox(dir, options);
      let model: number[] = []; // what should be pending, ascending
      let droppedBefore = 0;
      let removalsSinceCommit = 0;
      for (let step = 0; step < 40; step++) {
        const op = random();
        if (op < 0.5) {
          const batch = range(1, 1 + Math.floor(random() * 20)).map(() => box.append('t', { pad: 'x'.repeat(Math.floor(random() * 400)) }));
          model.push(...ids(await Promise.all(batch)));
          removalsSinceCommit = 0;
        } else if (op < 0.85) {
          const picked = model.filter(() => random() < 0.3);
          await Promise.all([...picked].reverse().map((id) => box.ack(id)));
          model = model.filter((id) => !picked.includes(id));
          removalsSinceCommit += picked.length;
        } else {
          await box.close();
          box = await openBox(dir, options);
          droppedBefore = 0;
        }
        // Only drops for size may have happened since: exactly the oldest, and all counted.
        const pending = ids(await box.pending());
        const stats = box.stats();
        const dropped = model.length - pending.length;
        expect(pending).toEqual(model.slice(dropped));
        expect(stats.droppedForSize - droppedBefore).toBe(dropped);
        // The bound is enforced at each commit; removal records written since may exceed it by their size.
        expect(stats.bytes).toBeLessThanOrEqual(options.maxBytes + 28 * removalsSinceCommit);
        model = pending;
        droppedBefore = stats.droppedForSize;
      }
      await box.close();
    }
    expect(compactions).toBeGreaterThan(0);
  }, 30_000);

  test('entries older than maxAgeMs are dropped oldest first, counted, and stay dropped after reopen', async () => {
    const dir = tempDir();
    const log = capture();
    let clock = Date.UTC(2026, 5, 1);
    const options = { maxAgeMs: 10_000, logger: log.logger, now: () => clock };
    let box = await openBox(dir, options);
    await Promise.all(range(1, 10).map((n) => box.append('t', { n })));
    clock += 6_000;
    await Promise.all(range(11, 20).map((n) => box.append('t', { n })));
    expect(box.stats().oldestAgeMs).toBe(6_000);
    clock += 5_000;
    expect(ids(await box.pending())).toEqual(range(11, 20));
    expect(box.stats()).toMatchObject({ pending: 10, droppedForAge: 10, oldestAgeMs: 5_000 });
    expect(log.find(/dropping the oldest/)[0]).toMatchObject({ reason: 'age', dropped: 10, firstId: 1, lastId: 10 });
    await box.close();
    box = await openBox(dir, { ...options, logger: undefined });
    expect(ids(await box.pending())).toEqual(range(11, 20));
    expect(box.stats().droppedForAge).toBe(0); // counters are per process; the drops were journaled
    await box.close();
  });

  test('entries stamped while the clock was not set (before 2024) are not expired by a clock step', async () => {
    const dir = tempDir();
    let clock = 5_000; // 1970: a device without RTC before NTP
    let box = await openBox(dir, { maxAgeMs: 1_000, now: () => clock });
    await box.append('t', { n: 1 });
    clock = Date.UTC(2026, 5, 1);
    await box.append('t', { n: 2 });
    expect(ids(await box.pending())).toEqual([1, 2]);
    clock += 2_000;
    expect(ids(await box.pending())).toEqual([1]);
    await box.close();
  });
});

describe('outbox: damaged files', () => {
  async function tenEntries(dir: string): Promise<string> {
    const box = await openBox(dir);
    for (let n = 1; n <= 10; n++) await box.append('t', result(n));
    await box.close();
    const [segment] = segmentFiles(dir);
    return join(dir, segment);
  }

  test('a torn last record (power cut mid-write) is ignored and the file truncated to the last whole record', async () => {
    const dir = tempDir();
    const file = await tenEntries(dir);
    const offsets = frameOffsets(file);
    truncateSync(file, statSync(file).size - 7);
    const log = capture();
    let box = await openBox(dir, { logger: log.logger });
    expect(ids(await box.pending())).toEqual(range(1, 9));
    expect(log.find(/torn or unreadable tail/)[0]).toMatchObject({ file, offset: offsets[9] });
    expect(statSync(file).size).toBe(offsets[9]);
    expect(box.stats().corrupt).toBe(0);
    const next = await box.append('t', result(99));
    expect(next.id).toBeGreaterThanOrEqual(10);
    await box.close();
    const again = capture();
    box = await openBox(dir, { logger: again.logger });
    expect(ids(await box.pending())).toEqual([...range(1, 9), next.id]);
    expect(again.lines.filter((l) => l.level >= 40)).toEqual([]);
    await box.close();
  });

  test('garbage after the last record (even one starting like a frame) is ignored and removed', async () => {
    const dir = tempDir();
    const file = await tenEntries(dir);
    const size = statSync(file).size;
    appendFileSync(file, Buffer.concat([MAGIC, Buffer.from([0x10, 0, 0, 0, 0xff, 0, 0, 0]), Buffer.alloc(300, 0xab)]));
    const log = capture();
    const box = await openBox(dir, { logger: log.logger });
    expect(ids(await box.pending())).toEqual(range(1, 10));
    expect(log.find(/torn or unreadable tail/)[0]).toMatchObject({ file, offset: size, bytes: 312 });
    expect(statSync(file).size).toBe(size);
    await box.close();
  });

  test.each([
    ['a payload byte', 60],
    ['the length field', 9],
    ['the magic', 1],
  ])('a flipped bit in %s of a middle record skips that record only, with a warning naming file and offset', async (_what, at) => {
    const dir = tempDir();
    const file = await tenEntries(dir);
    const offsets = frameOffsets(file);
    const bytes = readFileSync(file);
    bytes[offsets[4] + at] ^= 0x04;
    writeFileSync(file, bytes);
    const log = capture();
    let box = await openBox(dir, { logger: log.logger });
    const pending = await box.pending();
    expect(ids(pending)).toEqual([1, 2, 3, 4, 6, 7, 8, 9, 10]);
    expect(pending.map((e) => e.payload)).toEqual([1, 2, 3, 4, 6, 7, 8, 9, 10].map(result));
    expect(log.find(/corrupt record/)).toEqual([expect.objectContaining({ file, offset: offsets[4], bytes: offsets[5] - offsets[4] })]);
    expect(box.stats().corrupt).toBe(1);
    expect((await box.append('t', result(11))).id).toBe(11);
    await box.close();
    box = await openBox(dir);
    expect(ids(await box.pending())).toEqual([1, 2, 3, 4, 6, 7, 8, 9, 10, 11]);
    await box.close();
  });
});

/** A child Node process running the outbox from the TypeScript sources (tsx), reporting on stdout. */
const CHILD = `
const { Outbox } = await import(process.env.OUTBOX_MODULE);
const box = await Outbox.open(process.env.OUTBOX_DIR, { maxBytes: 64 << 20, maxAgeMs: 3600000, segmentBytes: 32768, ...(process.env.WRITE_BUDGET_MS ? { inlineWriteBudgetMs: Number(process.env.WRITE_BUDGET_MS) } : {}) });
const say = (line) => process.stdout.write(line + '\\n');
say('ready ' + process.pid);
if (process.env.MODE === 'hold') {
  setInterval(() => {}, 1000);
} else {
  let n = 0;
  let inflight = 0;
  for (;;) {
    const k = 1 + (n % 7);
    for (let i = 0; i < k; i++) {
      const mine = n++;
      inflight++;
      box.append('ast/test', { n: mine, pad: 'z'.repeat(300) }).then((e) => {
        inflight--;
        say('D ' + e.id + ' ' + e.payload.n);
        if (e.id % 3 === 0) {
          say('R ' + e.id);
          box.ack(e.id).then(() => say('A ' + e.id));
        }
      }, (err) => { inflight--; say('E ' + err.message); });
    }
    await new Promise((r) => setImmediate(r));
    while (inflight > 200) await new Promise((r) => setTimeout(r, 1));
  }
}
`;

interface Child {
  proc: ChildProcess;
  lines: string[];
  waitFor(predicate: (lines: string[]) => boolean, timeoutMs?: number): Promise<void>;
  exited: Promise<void>;
}

function startChild(dir: string, mode: 'produce' | 'hold', writeBudget?: number): Child {
  const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CHILD], {
    cwd: REPO,
    env: { ...process.env, OUTBOX_MODULE, OUTBOX_DIR: dir, MODE: mode, ...(writeBudget === undefined ? {} : { WRITE_BUDGET_MS: String(writeBudget) }) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  let stderr = '';
  proc.stderr!.on('data', (d) => (stderr += d));
  const listeners = new Set<() => void>();
  createInterface({ input: proc.stdout! }).on('line', (line) => {
    lines.push(line);
    for (const l of listeners) l();
  });
  // 'close', not 'exit': every line the child wrote has been read by then.
  const exited = new Promise<void>((r) => proc.once('close', () => r()));
  // A last look once the child is gone, for waits on what it wrote before dying.
  proc.once('exit', () => setTimeout(() => listeners.forEach((l) => l()), 10));
  children.push(proc);
  return {
    proc,
    lines,
    exited,
    waitFor(predicate, timeoutMs = 20_000) {
      return untilNotified(listeners, () => predicate(lines), {
        what: 'the child',
        timeoutMs,
        context: () => `; stdout tail: ${lines.slice(-3).join(' | ')}; stderr: ${stderr}`,
      }).then(() => undefined);
    },
  };
}

describe('outbox: crashes and locking', () => {
  test.each(WRITE_PATHS)('SIGKILL mid-run, three times over (%s): every entry reported durable is pending, in order, intact', async (_, budget) => {
    const dir = tempDir();
    const durable = new Map<number, number>(); // id -> payload n
    const ackRequested = new Set<number>(); // may or may not be pending: the ack raced the kill
    const acked = new Set<number>(); // ack() resolved: its record was written
    let previousMax = 0;
    for (let round = 0; round < 3; round++) {
      const child = startChild(dir, 'produce', budget);
      const want = 150 + round * 97;
      await child.waitFor((lines) => lines.filter((l) => l.startsWith('D ')).length >= want);
      await new Promise((r) => setTimeout(r, round * 7));
      child.proc.kill('SIGKILL');
      await child.exited;
      const roundIds: number[] = [];
      for (const line of child.lines) {
        const [tag, id, n] = line.split(' ');
        if (tag === 'D') {
          durable.set(Number(id), Number(n));
          roundIds.push(Number(id));
        } else if (tag === 'R') ackRequested.add(Number(id));
        else if (tag === 'A') acked.add(Number(id));
        else expect(tag).toBe('ready');
      }
      expect(Math.min(...roundIds)).toBeGreaterThan(previousMax); // ids monotonic across (crash) restarts
      previousMax = Math.max(...roundIds);
    }
    const log = capture();
    const box = await openBox(dir, { logger: log.logger });
    const pending = await box.pending();
    const pendingIds = ids(pending);
    expect(pendingIds).toEqual([...pendingIds].sort((a, b) => a - b));
    expect(new Set(pendingIds).size).toBe(pendingIds.length);
    const byId = new Map(pending.map((e) => [e.id, e]));
    const missing = [...durable.keys()].filter((id) => !ackRequested.has(id) && !byId.has(id));
    expect(missing).toEqual([]);
    expect(durable.size - ackRequested.size).toBeGreaterThan(500);
    for (const [id, n] of durable) {
      if (byId.has(id)) expect(byId.get(id)!.payload).toEqual({ n, pad: 'z'.repeat(300) });
    }
    // SIGKILL (unlike a power cut) keeps what was written: acks that resolved are not replayed.
    expect(pendingIds.filter((id) => acked.has(id))).toEqual([]);
    expect(box.stats().corrupt).toBe(0);
    expect(log.find(/corrupt/)).toEqual([]);
    await box.close();
  }, 60_000);

  test('a live lock is refused naming its pid; once that process is killed its lock is taken over', async () => {
    const dir = tempDir();
    const child = startChild(dir, 'hold');
    await child.waitFor((lines) => lines.some((l) => l.startsWith('ready')));
    const pid = child.proc.pid!;
    const refused = await Outbox.open(dir, { maxBytes: 1 << 20, maxAgeMs: ONE_HOUR }).catch((e) => e);
    expect(refused).toBeInstanceOf(OutboxError);
    expect(refused).toMatchObject({ kind: 'locked' });
    expect(refused.message).toContain(`pid ${pid}`);
    child.proc.kill('SIGKILL');
    await child.exited;
    const log = capture();
    const box = await openBox(dir, { logger: log.logger });
    expect(log.find(/stale lock/)[0]).toMatchObject({ reason: `process ${pid} no longer exists` });
    await box.close();
    expect(existsSync(join(dir, 'LOCK'))).toBe(false);
  }, 30_000);

  test('a stale lock file (dead pid, or unreadable) is taken over; a second open in the same process is refused', async () => {
    const dir = tempDir();
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
    writeFileSync(join(dir, 'LOCK'), JSON.stringify({ pid: dead, bootId: null, startTime: null, hostname: 'x', since: 'then' }));
    const box = await openBox(dir);
    await expect(openBox(dir)).rejects.toThrow(/already open in this process/);
    await box.close();
    writeFileSync(join(dir, 'LOCK'), 'garbage');
    const again = await openBox(dir);
    await again.close();
  });

  test.for(WRITE_PATHS)('disk full (ENOSPC on a real 256 KiB tmpfs, %s): appends reject naming the file, nothing earlier is harmed, and it recovers', { timeout: 30_000 }, async ([, budget], ctx) => {
    const mnt = tempDir();
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', mnt], { stdio: 'pipe' });
    } catch (e) {
      ctx.skip(`cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): ${(e as Error).message.split('\n')[0]}`);
    }
    let box: Outbox | null = null;
    try {
      const dir = join(mnt, 'outbox');
      const log = capture();
      const options = { maxBytes: 8 << 20, segmentBytes: 16 * 1024, logger: log.logger, inlineWriteBudgetMs: budget };
      box = await openBox(dir, options);
      const durable: number[] = [];
      let failure: unknown = null;
      for (let n = 0; n < 1000 && !failure; n++) {
        await box.append('t', { n, pad: 'f'.repeat(1500) }).then(
          (e) => durable.push(e.id),
          (e) => (failure = e),
        );
      }
      expect(failure).toBeInstanceOf(OutboxError);
      const error = failure as OutboxError;
      expect(error).toMatchObject({ kind: 'io', code: 'ENOSPC' });
      expect(error.file).toMatch(new RegExp(`^${dir}/\\d{16}\\.log$`));
      expect(error.message).toContain(error.file);
      expect(box.stats().droppedOnError).toBe(1);
      expect(log.find(/cannot journal entries/)).toHaveLength(1);
      await expect(box.append('t', { pad: 'f'.repeat(1500) })).rejects.toMatchObject({ code: 'ENOSPC' });
      expect(ids(await box.pending())).toEqual(durable);

      // An ack while the disk is full (its record may not fit): kept in memory, written later or at close.
      const newest = durable.pop()!;
      await box.ack(newest);
      // The broker comes back: acking the oldest frees whole segments, and journaling works again.
      const half = durable.slice(0, durable.length >> 1);
      await Promise.all(half.map((id) => box!.ack(id)));
      const after = await box.append('t', { n: -1, pad: 'f'.repeat(1500) });
      expect(log.find(/journaling works again/)).toHaveLength(1);
      await box.close();

      const reopenLog = capture();
      box = await openBox(dir, { ...options, logger: reopenLog.logger });
      const pending = await box.pending();
      expect(ids(pending)).toEqual([...durable.slice(half.length), after.id]);
      expect(pending.every((e) => (e.payload as { pad: string }).pad.length === 1500)).toBe(true);
      expect(box.stats().corrupt).toBe(0);
      expect(reopenLog.find(/corrupt|torn/)).toEqual([]);
    } finally {
      await box?.close();
      execFileSync('umount', [mnt], { stdio: 'pipe' });
    }
  });
});
