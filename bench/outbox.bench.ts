/**
 * Outbox append throughput and append-to-durable latency (the time from `append()` to its promise
 * resolving, i.e. after the group commit's fdatasync), with ~400-byte JSON inspection records. Prints
 * figures; it is not a test.
 *
 *   npx tsx bench/outbox.bench.ts                        # 10k entries per scenario, in os.tmpdir()
 *   npx tsx bench/outbox.bench.ts --entries 2000 --dir /var/lib/ast-edge/bench --rates 100 --concurrency 1,64 --writes inline
 *
 * --writes: where the journal writes run — `inline` (the default: on the event loop while they stay within
 * mqtt.outbox.inlineWriteBudgetMs) and/or `pool` (libuv's I/O thread pool); each scenario runs once per path.
 * Scenarios:
 *   closed loop, concurrency C   C producers, each awaiting its append before the next: C = 1 is one fsync
 *                                per entry (the floor of latency), larger C shows group commit
 *   paced R/s                    appends issued on a timer at R per second regardless of completions, the
 *                                way the inspection loop produces them (a 100/s run lasts entries/100 s, so
 *                                it is capped by --paced-seconds)
 * Every entry is acked as soon as it is durable (the broker is assumed up), so segments are deleted as
 * in production. "floor" rows time a plain O_DSYNC pwrite of the same JSON per entry, no outbox, on the same
 * path (event loop or thread pool): what the storage itself costs, measured in the same run. "cpu µs/append" is process CPU time (user + system) over the scenario per entry.
 * Run it on the device's real storage (--dir): fsync cost is the whole story and differs by orders of
 * magnitude between a VM disk, an SD card and an industrial SSD.
 */
import { constants, fdatasyncSync, mkdtempSync, rmSync, statfsSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { InspectionRecordSchema, type InspectionRecord } from '../src/config/result-schema.js';
import { Outbox } from '../src/publish/outbox.js';

const { values: args } = parseArgs({
  options: {
    entries: { type: 'string', default: '10000' },
    dir: { type: 'string' },
    concurrency: { type: 'string', default: '1,8,64' },
    rates: { type: 'string', default: '100,1000' },
    'paced-seconds': { type: 'string', default: '10' },
    writes: { type: 'string', default: 'inline,pool' },
  },
});
const ENTRIES = Number(args.entries);
const PACED_SECONDS = Number(args['paced-seconds']);
const parent = args.dir ?? tmpdir();

function record(seq: number): InspectionRecord {
  return InspectionRecordSchema.parse({
    seq,
    station: 'plant-ostrava/line-3/station-07-final-visual-inspection',
    partId: `PN-4711-0815-${String(seq).padStart(9, '0')}`,
    capturedAt: new Date(Date.UTC(2026, 5, 1) + seq * 10).toISOString(),
    score: 1.2345678901234567,
    normalizedScore: 0.4123456789012345,
    threshold: 2.345678901234567,
    verdict: seq % 50 === 0 ? 'reject' : 'pass',
    latencyMs: 23.456789,
    model: { id: 'ast-mobilenetv2-edge-housing-cover-topside', version: '2026.05.28-rc3+calib.17' },
  });
}
const TOPIC = 'ast-edge/plant-ostrava/line-3/station-07/result';

interface Figures {
  name: string;
  entries: number;
  seconds: number;
  latencies: number[];
  commits: number;
  cpuMicros: number;
}

type Drive = (timed: (seq: number) => Promise<void>) => Promise<void>;

async function measure(name: string, entries: number, drive: Drive, timed: (seq: number) => Promise<void>, latencies: number[]) {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await drive(timed);
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  return { name, entries, seconds, latencies, commits: 0, cpuMicros: cpu.user + cpu.system };
}

type WritePath = 'inline' | 'pool';

async function scenario(name: string, entries: number, drive: Drive, writes: WritePath): Promise<Figures> {
  const dir = mkdtempSync(join(parent, 'ast-outbox-bench-'));
  try {
    // inline: the agent's default budget; pool: budget 0.
    const box = await Outbox.open<InspectionRecord>(dir, { maxBytes: 256 << 20, maxAgeMs: 24 * 3_600_000, ...(writes === 'pool' ? { inlineWriteBudgetMs: 0 } : {}) });
    const latencies: number[] = [];
    const figures = await measure(name, entries, drive, async (seq) => {
      const t0 = performance.now();
      const entry = await box.append(TOPIC, record(seq));
      latencies.push(performance.now() - t0);
      void box.ack(entry.id);
    }, latencies);
    const stats = box.stats();
    figures.commits = stats.commits;
    if (writes === 'inline' && stats.inlineWriteOverruns > 0) figures.name += ` (${stats.inlineWriteOverruns} write${stats.inlineWriteOverruns === 1 ? '' : 's'} over budget${stats.inlineWrites ? '' : ', ended on the pool'})`;
    await box.close();
    return figures;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The floor: JSON.stringify and one O_DSYNC pwrite per entry into a plain file, no framing, no index, no acks. */
async function baseline(name: string, entries: number, drive: Drive, writes: WritePath): Promise<Figures> {
  const dir = mkdtempSync(join(parent, 'ast-outbox-bench-'));
  const handle = await open(join(dir, 'raw'), constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | (constants.O_DSYNC ?? 0));
  try {
    const latencies: number[] = [];
    let position = 0;
    const figures = await measure(name, entries, drive, async (seq) => {
      const t0 = performance.now();
      const bytes = Buffer.from(JSON.stringify(record(seq)) + '\n');
      const at = position;
      position += bytes.length;
      if (writes === 'inline') {
        writeSync(handle.fd, bytes, 0, bytes.length, at);
        if (!constants.O_DSYNC) fdatasyncSync(handle.fd);
      } else {
        await handle.write(bytes, 0, bytes.length, at);
        if (!constants.O_DSYNC) await handle.datasync();
      }
      latencies.push(performance.now() - t0);
    }, latencies);
    figures.commits = entries;
    return figures;
  } finally {
    await handle.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const closedLoop = (concurrency: number): Drive => async (timed) => {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < ENTRIES) await timed(next++);
    }),
  );
};

const paced = (rate: number, entries: number): Drive => async (timed) => {
  const inflight: Promise<void>[] = [];
  const start = performance.now();
  let issued = 0;
  while (issued < entries) {
    const due = Math.min(entries, Math.floor(((performance.now() - start) / 1000) * rate) + 1);
    while (issued < due) inflight.push(timed(issued++));
    // Sleep until the next one is due (timer granularity is 1 ms, so at 1000/s some ticks issue two).
    await new Promise((r) => setTimeout(r, Math.max(0, start + (issued * 1000) / rate - performance.now())));
  }
  await Promise.all(inflight);
};

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

const FS_TYPES: Record<number, string> = { 0xef53: 'ext2/3/4', 0x01021994: 'tmpfs', 0x58465342: 'xfs', 0x9123683e: 'btrfs', 0x4d44: 'vfat', 0x794c7630: 'overlayfs', 0x2fc12fc1: 'zfs' };

const sample = JSON.stringify(record(123456));
const fsType = statfsSync(parent).type;
console.log(`outbox bench: ${ENTRIES} entries per scenario, payload ${Buffer.byteLength(sample)} bytes of JSON, topic ${TOPIC.length} bytes`);
console.log(`folder ${parent} (${FS_TYPES[fsType] ?? `fs type 0x${fsType.toString(16)}`}), node ${process.version}, load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);

const runs: Figures[] = [];
for (const writes of args.writes.split(',').filter(Boolean) as WritePath[]) {
  if (writes !== 'inline' && writes !== 'pool') throw new Error(`--writes takes inline and/or pool, not ${writes}`);
  for (const c of args.concurrency.split(',').filter(Boolean).map(Number)) {
    runs.push(await scenario(`${writes}: closed loop, concurrency ${c}`, ENTRIES, closedLoop(c), writes));
    if (c === 1) runs.push(await baseline(`${writes}:   floor: raw O_DSYNC pwrite, concurrency 1`, ENTRIES, closedLoop(1), writes));
  }
  for (const rate of args.rates.split(',').filter(Boolean).map(Number)) {
    const entries = Math.min(ENTRIES, Math.max(1, Math.round(rate * PACED_SECONDS)));
    runs.push(await scenario(`${writes}: paced ${rate}/s`, entries, paced(rate, entries), writes));
    if (rate <= 100) runs.push(await baseline(`${writes}:   floor: raw O_DSYNC pwrite, paced ${rate}/s`, entries, paced(rate, entries), writes));
  }
}

const header = ['scenario', 'entries', 'appends/s', 'p50 ms', 'p99 ms', 'max ms', 'entries/commit', 'cpu µs/append'];
const rows = runs.map((r) => {
  const sorted = [...r.latencies].sort((a, b) => a - b);
  return [
    r.name,
    String(r.entries),
    (r.entries / r.seconds).toFixed(0),
    quantile(sorted, 0.5).toFixed(3),
    quantile(sorted, 0.99).toFixed(3),
    sorted[sorted.length - 1].toFixed(3),
    (r.entries / Math.max(1, r.commits)).toFixed(1),
    (r.cpuMicros / r.entries).toFixed(0),
  ];
});
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
console.log();
console.log(line(header));
for (const row of rows) console.log(line(row));
