/**
 * What the agent around the detector costs: the detector alone against the whole pipeline (GStreamer file
 * source → inspection loop → detector thread → a result sink), same bundle, same part images, same runtime
 * settings. Prints figures; it is not a test.
 *
 *   npx tsx bench/pipeline.bench.ts                              # the demo's bundle and parts (built on first use)
 *   npx tsx bench/pipeline.bench.ts --seconds 10 --rounds 12      # longer: less noise
 *   npx tsx bench/pipeline.bench.ts --bundle models/x/bundle --parts /data/parts --batch 4
 *
 * Interleaved so that background load hits both alike: alone, e2e, alone, e2e, …, alone. Every end-to-end
 * round sits between two detector-alone rounds and is compared with their mean; the summary is the median
 * over rounds. Short rounds and many of them: on a shared machine the other processes' load comes in bursts
 * of some seconds, and a round pair that sees the same background is worth more than a long window.
 *   alone   the bundle's fused detector scoring the part images (decoded once with sharp to the model input
 *           size), one call after the other, `--batch` images per call: in this thread (`Detector`) and
 *           through `DetectorThread` (what the agent runs), alternating in ~1 s slices. Each call gets a fresh
 *           copy of its frames, as the inspection loop makes one (a transfer detaches the buffer).
 *   e2e     `Agent.start` with a `file` source over the parts folder (loop: true), continuous trigger, the
 *           agent's default runtime settings and a counting ResultSink, measured over a window after a
 *           warm-up. The agent's detector is wrapped (bench only) to time each call and the detector's idle
 *           time between calls, and the threads of the process are read from /proc to split its CPU time:
 *           main thread / detector thread + ONNX Runtime pool (threads born in Agent.start) / GStreamer
 *           (born after the source started) / other (V8 and libuv helpers, the idle alone detectors).
 * overhead = 1 − e2e inspections/s ÷ detector-alone frames/s (goal < 10 %).
 * "neighbours": CPU that the rest of the machine (other processes, and the hypervisor as steal) took meanwhile, from
 * /proc/stat minus this process. It is the main source of noise on a shared VM: compare it across rounds.
 *
 * Source rate. A file source is paced by GStreamer (appsink sync) at `fps`; the bench sets it to
 * `--fps-factor` (default 1.25) × the best detector-alone rate seen so far. At or below the detector's rate the
 * detector would wait whenever a frame comes late or out of phase (frames every 1/fps, the detector free at
 * other moments), and the bench would measure the source's pacing, not the pipeline's capacity. Far above
 * it, GStreamer decodes and scales frames that the loop then drops from its full queue: CPU that on two
 * cores is taken from ONNX Runtime's threads and that a camera at a sensible rate would not cost. At 1.25× a
 * frame is waiting at nearly every detector completion, and only ~1 in 5 decoded frames is wasted. A round
 * in which the detector was idle more than 5 % of the time is flagged (source-limited) and left out of the
 * overhead.
 *
 * A folder source labels frames with their file names, which the loop takes as part ids, so a frame pushed
 * out of the full queue becomes an `error` verdict ("overload …") rather than a silent drop: the bench counts
 * those as dropped. Latency is the records' latencyMs (appsink hand-over → verdict) of the scored parts. It
 * includes the wait in the queue (a full queue of `queueLength` frames, since the source outruns the
 * detector), so expect about 2–2.5× the detector's ms/frame with the default queue of 2, not 1×.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import pino from 'pino';
import sharp from 'sharp';
import { Agent } from '../src/agent/agent.js';
import { readBundle } from '../src/bundle/bundle-store.js';
import { ensureDemoAssets } from '../src/cli/demo-assets.js';
import { AgentConfigSchema, type AgentConfig } from '../src/config/agent-schema.js';
import type { RuntimeOptions } from '../src/config/runtime-schema.js';
import type { InspectionOutcome, ResultSink } from '../src/publish/result-sink.js';
import { Detector, type DetectorResult } from '../src/runtime/detector.js';
import { DetectorThread, type FrameScorer } from '../src/runtime/detector-thread.js';
import type { HostTensor } from '../src/onnx/tensor.js';

// ---------------------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------------------

const { values: flags } = parseArgs({
  options: {
    seconds: { type: 'string', default: '6' },
    rounds: { type: 'string', default: '8' },
    bundle: { type: 'string' },
    parts: { type: 'string' },
    batch: { type: 'string', default: '1' },
    'fps-factor': { type: 'string', default: '1.25' },
    fps: { type: 'string' },
    'warmup-seconds': { type: 'string', default: '3' },
    threads: { type: 'string' },
    spin: { type: 'string' },
    'queue-length': { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});

if (flags.help) {
  console.log(`usage: npx tsx bench/pipeline.bench.ts [options]
  --seconds N          e2e: measuring window of each round; alone: detector time of each round, split
                       between in-thread and DetectorThread (default 6)
  --rounds N           e2e rounds (default 8); alone rounds run before, between and after them (N + 1)
  --bundle DIR         bundle with a fused detector (default: the demo's, built on first use: minutes)
  --parts DIR          folder of part images, PNG or JPEG (default: the demo's)
  --batch N            images per detector call: alone calls, and the agent's inspection.maxBatch (default 1)
  --fps-factor F       e2e source fps = F × the best detector-alone rate so far (default 1.25)
  --fps R              a fixed e2e source fps instead
  --warmup-seconds S   e2e: running time before the window opens (default 3)
  --threads N          model.intraOpThreads for both (default: the agent's default, 0 = ONNX Runtime's choice)
  --spin on|off        model.spinWait for both (default: the agent's default, off)
  --queue-length N     inspection.queueLength (default: the agent's default, or --batch if larger)`);
  process.exit(0);
}

const seconds = Number(flags.seconds);
const rounds = Math.max(1, Number(flags.rounds));
const batch = Math.max(1, Number(flags.batch));
const fpsFactor = Number(flags['fps-factor']);
const fixedFps = flags.fps === undefined ? undefined : Number(flags.fps);
const warmupSeconds = Number(flags['warmup-seconds']);
/** In-thread and DetectorThread alternate in slices of this length within an alone round. */
const SLICE_MS = 1000;
const DEADLINE_MS = 5000;
/** A detector busy less than this fraction of an e2e window waited for frames: the round is source-limited. */
const SOURCE_LIMITED_BUSY = 0.95;
/** Neighbours above this many cores: the figures say more about them than about us. */
const BUSY_NEIGHBOURS = 0.25;

const logger = pino({ level: 'error' }, pino.destination(2));
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------------
// Statistics and /proc
// ---------------------------------------------------------------------------------------------------

const median = (xs: number[]) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
/** Nearest-rank percentile. */
const percentile = (xs: number[], p: number) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
};
const fmt = (v: number, digits = 1) => (Number.isFinite(v) ? v.toFixed(digits) : '—');
const pct = (v: number, digits = 1) => (Number.isFinite(v) ? `${(100 * v).toFixed(digits)}%` : '—');

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100;

/** CPU seconds (user + system) of each thread of this process, by thread id, with its name. */
function threadCpu(): Map<number, { name: string; seconds: number }> {
  const out = new Map<number, { name: string; seconds: number }>();
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      // after "pid (name) ": state is field 3, utime 14 and stime 15 → indices 11 and 12 of the rest
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(Number(tid), {
        name: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')),
        seconds: (Number(fields[11]) + Number(fields[12])) / CLK_TCK,
      });
    } catch {
      // the thread ended between readdir and read
    }
  }
  return out;
}

/** Busy CPU seconds of the whole machine (/proc/stat: user nice system irq softirq steal). */
function hostBusySeconds(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return (f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!) / CLK_TCK;
}

const processCpuSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

// ---------------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------------

async function packageVersion(): Promise<string> {
  const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

async function inputs(): Promise<{ bundle: string; parts: string }> {
  if (flags.bundle && flags.parts) return { bundle: resolve(flags.bundle), parts: resolve(flags.parts) };
  const demo = await ensureDemoAssets(await packageVersion(), logger);
  return { bundle: resolve(flags.bundle ?? demo.bundle), parts: resolve(flags.parts ?? demo.parts) };
}

/** The part images, decoded once, at the model's input size, RGB uint8 HWC. */
async function decodeParts(folder: string, width: number, height: number): Promise<Uint8Array[]> {
  const names = (await readdir(folder)).filter((n) => !n.startsWith('.') && /\.(png|jpe?g)$/i.test(n)).sort();
  if (names.length === 0) throw new Error(`no PNG or JPEG images in ${folder}`);
  return Promise.all(
    names.map(async (n) => {
      const { data, info } = await sharp(join(folder, n))
        .removeAlpha()
        .toColourspace('srgb')
        .resize(width, height, { fit: 'fill' })
        .raw()
        .toBuffer({ resolveWithObject: true });
      if (info.channels !== 3 || data.length !== width * height * 3) throw new Error(`${n}: decoded to ${info.width}×${info.height}×${info.channels}`);
      return new Uint8Array(data);
    }),
  );
}

class Feeder {
  private next = 0;
  constructor(
    private readonly images: Uint8Array[],
    private readonly width: number,
    private readonly height: number,
  ) {}

  /** `batch` images in a fresh buffer (the inspection loop also copies each frame into a fresh batch buffer). */
  take(): HostTensor<'uint8'> {
    const bytes = this.width * this.height * 3;
    const data = new Uint8Array(batch * bytes);
    for (let i = 0; i < batch; i++) data.set(this.images[this.next++ % this.images.length]!, i * bytes);
    return { dtype: 'uint8', dims: [batch, this.height, this.width, 3], data };
  }
}

// ---------------------------------------------------------------------------------------------------
// Detector alone
// ---------------------------------------------------------------------------------------------------

interface AloneFigures {
  frames: number;
  framesPerSecond: number;
  msPerFrame: number;
  /** Process CPU (all threads) per frame, ms. */
  cpuMsPerFrame: number;
  /** CPU the rest of the machine used meanwhile (other processes, hypervisor steal), in cores. */
  neighbours: number;
}

interface AloneRound {
  round: number;
  inThread: AloneFigures;
  thread: AloneFigures;
}

async function aloneRound(round: number, variants: { inThread: FrameScorer; thread: FrameScorer }, feeder: Feeder): Promise<AloneRound> {
  const budgetMs = (seconds * 1000) / 2;
  const acc = {
    inThread: { frames: 0, wallMs: 0, cpu: 0, host: 0 },
    thread: { frames: 0, wallMs: 0, cpu: 0, host: 0 },
  };
  const order = ['inThread', 'thread'] as const;
  for (let turn = 0; acc.inThread.wallMs < budgetMs || acc.thread.wallMs < budgetMs; turn++) {
    const key = order[turn % 2]!;
    const a = acc[key];
    if (a.wallMs >= budgetMs) continue;
    const detector = variants[key];
    await detector.inspect(feeder.take()); // untimed: the first call after a switch wakes the other pool
    const cpu0 = processCpuSeconds();
    const host0 = hostBusySeconds();
    const t0 = performance.now();
    while (performance.now() - t0 < Math.min(SLICE_MS, budgetMs - a.wallMs)) {
      await detector.inspect(feeder.take());
      a.frames += batch;
    }
    a.wallMs += performance.now() - t0;
    a.cpu += processCpuSeconds() - cpu0;
    a.host += hostBusySeconds() - host0;
  }
  const figures = (a: (typeof acc)['inThread']): AloneFigures => ({
    frames: a.frames,
    framesPerSecond: a.frames / (a.wallMs / 1000),
    msPerFrame: a.wallMs / a.frames,
    cpuMsPerFrame: (1000 * a.cpu) / a.frames,
    neighbours: Math.max(0, a.host - a.cpu) / (a.wallMs / 1000),
  });
  return { round, inThread: figures(acc.inThread), thread: figures(acc.thread) };
}

// ---------------------------------------------------------------------------------------------------
// End to end
// ---------------------------------------------------------------------------------------------------

interface E2eRound {
  round: number;
  fps: number;
  windowS: number;
  received: number;
  inspected: number;
  dropped: number;
  /** Verdict `error` for another reason than overload (deadline, model error). */
  otherErrors: number;
  inspectionsPerSecond: number;
  latencies: number[];
  /** Detector calls as the loop sees them (postMessage → result back), mean: time in flight ÷ calls. */
  callMs: number;
  /** Fraction of the window with a detector call in flight. */
  busy: number;
  /** Median time from a call's result to the loop's next call. */
  gapMs: number;
  cores: { total: number; main: number; detector: number; gstreamer: number; other: number };
  cpuMsPerInspection: number;
  gstMsPerFrame: number;
  neighbours: number;
  gstThreads: string[];
}

/** Counts verdicts; keeps the latency of scored parts while `recording`. */
class CountingSink implements ResultSink {
  readonly name = 'bench-count';
  recording = false;
  scored = 0;
  overload = 0;
  otherErrors = 0;
  latencies: number[] = [];
  async start(): Promise<void> {}
  async stop(): Promise<void> {}
  publish({ record }: InspectionOutcome): void {
    if (record.verdict !== 'error') {
      this.scored++;
      if (this.recording) this.latencies.push(record.latencyMs);
    } else if (record.reason?.startsWith('overload')) this.overload++;
    else this.otherErrors++;
  }
}

/** Wraps the agent's detector (bench only) to record when each call starts and ends. */
function instrument(detector: FrameScorer): { start: number; end: number }[] {
  const calls: { start: number; end: number }[] = [];
  const inner = detector.inspect.bind(detector);
  detector.inspect = async (...args: Parameters<FrameScorer['inspect']>): Promise<DetectorResult> => {
    const call = { start: performance.now(), end: NaN };
    calls.push(call);
    try {
      return await inner(...args);
    } finally {
      call.end = performance.now();
    }
  };
  return calls;
}

function agentConfig(bundle: string, parts: string, fps: number, stateDir: string): AgentConfig {
  return AgentConfigSchema.parse({
    station: 'bench',
    source: { kind: 'file', path: parts, loop: true, fps },
    model: {
      bundle,
      ...(flags.threads !== undefined ? { intraOpThreads: Number(flags.threads) } : {}),
      ...(flags.spin !== undefined ? { spinWait: flags.spin === 'on' } : {}),
    },
    inspection: {
      maxBatch: batch,
      deadlineMs: DEADLINE_MS,
      ...(flags['queue-length'] !== undefined ? { queueLength: Number(flags['queue-length']) } : batch > 2 ? { queueLength: batch } : {}),
    },
    http: { port: 0, host: '127.0.0.1' },
    mqtt: { metricsIntervalS: 0 },
    stateDir,
  });
}

/** What Agent.start hands to DetectorThread.load, so the alone runs use the same settings. */
function runtimeOf(config: AgentConfig): Partial<RuntimeOptions> {
  const { providers, intraOpThreads, interOpThreads, spinWait, warmupRuns } = config.model;
  return { providers, intraOpThreads, interOpThreads, spinWait, warmupRuns };
}

async function e2eRound(round: number, bundle: string, parts: string, fps: number): Promise<E2eRound> {
  const stateDir = mkdtempSync(join(tmpdir(), 'ast-pipeline-bench-'));
  const sink = new CountingSink();
  let calls: { start: number; end: number }[] = [];
  const before = new Set(threadCpu().keys());
  let agent: Agent | undefined;
  try {
    agent = await Agent.start(agentConfig(bundle, parts, fps, stateDir), {
      version: 'bench',
      logger,
      processMetrics: false,
      deferSource: true,
      sinks: (ctx) => {
        calls = instrument(ctx.detector);
        return [sink];
      },
    });
    const detectorThreads = new Set([...threadCpu().keys()].filter((t) => !before.has(t)));
    agent.startSource();
    await sleep(warmupSeconds * 1000);
    for (let i = 0; sink.scored < 3 && i < 100; i++) await sleep(100);
    if (sink.scored < 3) throw new Error(`no inspections ${warmupSeconds} s after the source started (streams: ${JSON.stringify(agent.health().streams)})`);

    const tally = agent.metrics.tally;
    const snap = () => ({
      t: performance.now(),
      tally: { ...tally },
      scored: sink.scored,
      overload: sink.overload,
      otherErrors: sink.otherErrors,
      threads: threadCpu(),
      cpu: processCpuSeconds(),
      host: hostBusySeconds(),
    });
    const s0 = snap();
    sink.recording = true;
    await sleep(seconds * 1000);
    sink.recording = false;
    const s1 = snap();
    const windowMs = s1.t - s0.t;

    // Detector calls over the window: time in flight, calls (cut ones by the fraction inside), turn-around.
    let busyMs = 0;
    let callsInWindow = 0;
    const gaps: number[] = [];
    for (let i = 0; i < calls.length; i++) {
      const c = calls[i]!;
      const end = Number.isFinite(c.end) ? c.end : s1.t;
      const overlap = Math.max(0, Math.min(end, s1.t) - Math.max(c.start, s0.t));
      busyMs += overlap;
      if (overlap > 0) callsInWindow += overlap / (end - c.start);
      const next = calls[i + 1];
      if (next && c.end >= s0.t && next.start <= s1.t) gaps.push(next.start - c.end);
    }

    // CPU by thread group over the window.
    const groups = { main: 0, detector: 0, gstreamer: 0, other: 0 };
    const gstNames = new Set<string>();
    for (const [tid, t1] of s1.threads) {
      const used = t1.seconds - (s0.threads.get(tid)?.seconds ?? 0);
      if (tid === process.pid) groups.main += used;
      else if (detectorThreads.has(tid)) groups.detector += used;
      else if (!before.has(tid)) {
        groups.gstreamer += used;
        gstNames.add(t1.name);
      } else groups.other += used;
    }
    const windowS = windowMs / 1000;
    const inspected = s1.scored - s0.scored;
    const received = s1.tally.frames - s0.tally.frames;
    const cpu = s1.cpu - s0.cpu;
    return {
      round,
      fps,
      windowS,
      received,
      inspected,
      dropped: s1.overload - s0.overload + (s1.tally.dropped - s0.tally.dropped),
      otherErrors: s1.otherErrors - s0.otherErrors,
      inspectionsPerSecond: inspected / windowS,
      latencies: sink.latencies,
      callMs: busyMs / callsInWindow,
      busy: busyMs / windowMs,
      gapMs: median(gaps),
      cores: {
        total: cpu / windowS,
        main: groups.main / windowS,
        detector: groups.detector / windowS,
        gstreamer: groups.gstreamer / windowS,
        other: groups.other / windowS,
      },
      cpuMsPerInspection: (1000 * cpu) / inspected,
      gstMsPerFrame: (1000 * groups.gstreamer) / received,
      neighbours: Math.max(0, s1.host - s0.host - cpu) / windowS,
      gstThreads: [...gstNames].sort(),
    };
  } finally {
    await agent?.stop();
    rmSync(stateDir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------------
// Run
// ---------------------------------------------------------------------------------------------------

function printAlone(r: AloneRound): void {
  const one = (f: AloneFigures) => `${fmt(f.framesPerSecond, 2)} frames/s ${fmt(f.msPerFrame)} ms/frame (CPU ${fmt(f.cpuMsPerFrame)} ms/frame, neighbours ${fmt(f.neighbours, 2)})`;
  console.log(`alone ${String(r.round).padStart(2)}  in-thread ${one(r.inThread)}   DetectorThread ${one(r.thread)}`);
}

interface Reference {
  inThread: number;
  thread: number;
  neighbours: number;
}

function printE2e(r: E2eRound, ref: Reference, overhead: { inThread: number; thread: number }): void {
  const c = r.cores;
  const flagsText = [
    r.busy < SOURCE_LIMITED_BUSY ? `SOURCE-LIMITED: detector idle ${pct(1 - r.busy)} of the window` : '',
    r.otherErrors ? `${r.otherErrors} other errors (deadline?)` : '',
  ].filter(Boolean);
  console.log(
    `e2e   ${String(r.round).padStart(2)}  ${fmt(r.inspectionsPerSecond, 2)} inspections/s → overhead ${pct(overhead.inThread)} vs in-thread (${fmt(ref.inThread, 2)}/s), ` +
      `${pct(overhead.thread)} vs DetectorThread (${fmt(ref.thread, 2)}/s); neighbours ${fmt(r.neighbours, 2)} (alone rounds around it: ${fmt(ref.neighbours, 2)})` +
      (flagsText.length ? `  [${flagsText.join('; ')}]` : ''),
  );
  console.log(
    `          source ${fmt(r.fps, 2)} fps; in ${fmt(r.windowS)} s received ${r.received}, inspected ${r.inspected}, dropped ${r.dropped}; ` +
      `latency p50 ${fmt(percentile(r.latencies, 50))} p99 ${fmt(percentile(r.latencies, 99))} ms; detector call ${fmt(r.callMs)} ms, busy ${pct(r.busy)}, ` +
      `turn-around ${fmt(r.gapMs, 2)} ms; CPU ${fmt(r.cpuMsPerInspection)} ms/insp. = ${fmt(c.total, 2)} cores ` +
      `(main ${fmt(c.main, 2)}, detector ${fmt(c.detector, 2)}, GStreamer ${fmt(c.gstreamer, 2)} = ${fmt(r.gstMsPerFrame, 2)} ms/frame, other ${fmt(c.other, 2)})`,
  );
}

async function main(): Promise<void> {
  const load0 = loadavg();
  console.log(
    `ast-edge pipeline bench — onnxruntime-node ${ort.env.versions.common}, ${cpus()[0]?.model ?? 'unknown CPU'} ×${cpus().length}, ` +
      `Node ${process.versions.node}; load avg ${load0.map((x) => x.toFixed(2)).join(' ')} (1/5/15 min) at start`,
  );
  if (load0[0]! > 0.7) console.log(`note: load average ${load0[0]!.toFixed(2)} — other processes share these cores; figures will be noisy`);

  const { bundle: bundlePath, parts } = await inputs();
  const bundle = await readBundle(bundlePath);
  const m = bundle.manifest;
  const { width, height } = m.input;
  const images = await decodeParts(parts, width, height);
  const template = agentConfig(bundlePath, parts, 1, tmpdir());
  const runtime = runtimeOf(template);
  console.log(`bundle ${m.id} ${m.version} (${m.preset} preset, ${width}×${height} RGB) from ${bundlePath}; ${images.length} part images from ${parts}`);
  console.log(
    `runtime (the agent's, for both): intra-op threads ${runtime.intraOpThreads || 'auto'}, inter-op ${runtime.interOpThreads || 'auto'}, ` +
      `spin ${runtime.spinWait ? 'on' : 'off'}; batch ${batch}. e2e: queue ${template.inspection.queueLength}, maxBatch ${template.inspection.maxBatch}, ` +
      `deadline ${DEADLINE_MS} ms, source fps ${fixedFps ?? `${fpsFactor} × best alone rate so far`}, ${warmupSeconds} s warm-up + ${seconds} s window; ` +
      `UV_THREADPOOL_SIZE ${process.env.UV_THREADPOOL_SIZE ?? '4 (default)'}`,
  );

  const t = performance.now();
  const inThread = await Detector.load(bundle, 'detector', runtime);
  const thread = await DetectorThread.load(bundlePath, runtime, logger);
  console.log(`detectors loaded in ${((performance.now() - t) / 1000).toFixed(1)} s (in-thread and DetectorThread; both stay loaded, idle during e2e)`);
  console.log(`"neighbours": cores the rest of the machine used meanwhile (other processes, steal) — the noise to watch`);
  console.log('');

  const feeder = new Feeder(images, width, height);
  for (const v of [inThread, thread]) for (let i = 0; i < 3; i++) await v.inspect(feeder.take());
  const alone: AloneRound[] = [await aloneRound(0, { inThread, thread }, feeder)];
  printAlone(alone[0]!);
  const e2e: E2eRound[] = [];
  const refs: Reference[] = [];
  const overheads: { inThread: number; thread: number }[] = [];
  for (let round = 1; round <= rounds; round++) {
    const best = Math.max(...alone.map((a) => Math.max(a.inThread.framesPerSecond, a.thread.framesPerSecond)));
    const fps = fixedFps ?? Math.round(fpsFactor * best * 100) / 100;
    const r = await e2eRound(round, bundlePath, parts, fps);
    e2e.push(r);
    const after = await aloneRound(round, { inThread, thread }, feeder);
    const prev = alone[alone.length - 1]!;
    alone.push(after);
    const ref: Reference = {
      inThread: (prev.inThread.framesPerSecond + after.inThread.framesPerSecond) / 2,
      thread: (prev.thread.framesPerSecond + after.thread.framesPerSecond) / 2,
      neighbours: (prev.inThread.neighbours + prev.thread.neighbours + after.inThread.neighbours + after.thread.neighbours) / 4,
    };
    refs.push(ref);
    const overhead = { inThread: 1 - r.inspectionsPerSecond / ref.inThread, thread: 1 - r.inspectionsPerSecond / ref.thread };
    overheads.push(overhead);
    printE2e(r, ref, overhead);
    printAlone(after);
  }
  await thread.release();
  await inThread.release();

  // Summary: medians over rounds (latency percentiles over all scored parts of all windows)
  const medA = (f: (a: AloneFigures) => number, which: 'inThread' | 'thread') => median(alone.map((a) => f(a[which])));
  const medE = (f: (r: E2eRound) => number) => median(e2e.map(f));
  const latencies = e2e.flatMap((r) => r.latencies);
  // A source-limited round measures the source's pacing, not the pipeline: left out of the overhead.
  const fed = e2e.map((r, i) => ({ r, i })).filter(({ r }) => r.busy >= SOURCE_LIMITED_BUSY);
  const counted = fed.length > 0 ? fed : e2e.map((r, i) => ({ r, i }));
  const oIn = median(counted.map(({ i }) => overheads[i]!.inThread));
  const oThread = median(counted.map(({ i }) => overheads[i]!.thread));
  const aloneRow = (label: string, which: 'inThread' | 'thread') =>
    `  ${label.padEnd(31)} ${fmt(medA((f) => f.framesPerSecond, which), 2).padStart(6)} frames/s  ${fmt(medA((f) => f.msPerFrame, which)).padStart(6)} ms/frame   ` +
    `CPU ${fmt(medA((f) => f.cpuMsPerFrame, which))} ms/frame; neighbours ${fmt(medA((f) => f.neighbours, which), 2)} cores`;
  const spread = (xs: number[]) => `${fmt(Math.min(...xs), 2)}–${fmt(Math.max(...xs), 2)}`;
  console.log('');
  console.log(`median of ${alone.length} alone and ${e2e.length} e2e rounds (batch ${batch}):`);
  console.log(aloneRow('detector alone, in-thread', 'inThread'));
  console.log(aloneRow('detector alone, DetectorThread', 'thread'));
  console.log(
    `  ${'end to end'.padEnd(31)} ${fmt(medE((r) => r.inspectionsPerSecond), 2).padStart(6)} insp./s   ${fmt(medE((r) => 1000 / r.inspectionsPerSecond)).padStart(6)} ms/insp.    ` +
      `CPU ${fmt(medE((r) => r.cpuMsPerInspection))} ms/insp.; neighbours ${fmt(medE((r) => r.neighbours), 2)} cores`,
  );
  console.log(
    `  e2e CPU by thread: main ${fmt(medE((r) => r.cores.main), 2)}, detector thread + ORT pool ${fmt(medE((r) => r.cores.detector), 2)}, ` +
      `GStreamer ${fmt(medE((r) => r.cores.gstreamer), 2)} (${fmt(medE((r) => r.gstMsPerFrame), 2)} ms/frame received), other ${fmt(medE((r) => r.cores.other), 2)} cores`,
  );
  console.log(
    `  e2e source ${fmt(medE((r) => r.fps), 2)} fps; per ${fmt(seconds, 0)} s window received ${medE((r) => r.received)}, inspected ${medE((r) => r.inspected)}, ` +
      `dropped ${medE((r) => r.dropped)}; detector busy ${pct(medE((r) => r.busy))}, call ${fmt(medE((r) => r.callMs))} ms ` +
      `(alone through DetectorThread ${fmt(medA((f) => f.msPerFrame, 'thread') * batch)} ms), turn-around ${fmt(medE((r) => r.gapMs), 2)} ms`,
  );
  console.log(
    `  latency capture → verdict p50 ${fmt(percentile(latencies, 50))} ms, p99 ${fmt(percentile(latencies, 99))} ms (${latencies.length} parts) ` +
      `beside the detector alone: ${fmt(medA((f) => f.msPerFrame, 'inThread'))} ms/frame in-thread, ${fmt(medA((f) => f.msPerFrame, 'thread'))} through the thread`,
  );
  console.log(
    `  overhead = 1 − e2e/alone: ${pct(oIn)} vs in-thread, ${pct(oThread)} vs DetectorThread; goal < 10% → ${oIn < 0.1 ? 'met' : 'not met'}` +
      (fed.length < e2e.length ? ` (${fed.length > 0 ? `${e2e.length - fed.length} source-limited round(s) left out` : 'every round was source-limited: raise --fps-factor'})` : ''),
  );
  console.log(`    rounds vs in-thread: ${overheads.map((o, i) => `${pct(o.inThread, 0)}${e2e[i]!.busy < SOURCE_LIMITED_BUSY ? '(src)' : ''}`).join(' ')}`);
  console.log(
    `    alone in-thread rate over rounds ${spread(alone.map((a) => a.inThread.framesPerSecond))} frames/s; neighbours ${spread([...alone.flatMap((a) => [a.inThread.neighbours, a.thread.neighbours]), ...e2e.map((r) => r.neighbours)])} cores`,
  );
  // Where the difference can come from: the hop and the loop's idle time are measured so that the neighbours'
  // load mostly cancels out (alternating slices; a share of the e2e window); the call slowdown is not.
  const hop = median(alone.map((a) => 1 - a.thread.framesPerSecond / a.inThread.framesPerSecond));
  const idle = median(counted.map(({ r }) => 1 - r.busy));
  const besides = median(counted.map(({ r }) => r.cores.main + r.cores.gstreamer + r.cores.other));
  const besidesMs = median(counted.map(({ r }) => (1000 * (r.cores.main + r.cores.gstreamer + r.cores.other)) / r.inspectionsPerSecond));
  const slower = median(counted.map(({ r, i }) => (r.callMs / batch) * refs[i]!.thread / 1000 - 1));
  console.log('  where it goes (medians over rounds):');
  console.log(`    thread hop: DetectorThread ${pct(hop)} slower than in-thread (alone rounds, alternating 1 s slices)`);
  console.log(`    loop: detector idle between calls ${pct(idle, 2)} of the e2e window (turn-around ${fmt(medE((r) => r.gapMs), 2)} ms per call)`);
  console.log(
    `    CPU besides the detector thread (main + GStreamer + other): ${fmt(besides, 3)} cores = ${fmt(besidesMs, 2)} ms per inspection, ` +
      `taken from the ${cpus().length} cores ONNX Runtime runs on`,
  );
  console.log(
    `    detector time per frame in e2e ${slower >= 0 ? '+' : ''}${pct(slower)} against the alone DetectorThread rounds around it ` +
      `(contention: our own CPU above, and whatever the neighbours did differently)`,
  );
  const quiet = counted.filter(({ r, i }) => r.neighbours < BUSY_NEIGHBOURS && refs[i]!.neighbours < BUSY_NEIGHBOURS);
  if (quiet.length > 0 && quiet.length < counted.length) {
    console.log(
      `    rounds where neighbours stayed < ${BUSY_NEIGHBOURS} cores (e2e and the alone rounds around it): ${quiet.length}, ` +
        `median overhead ${pct(median(quiet.map(({ i }) => overheads[i]!.inThread)))} vs in-thread, ${pct(median(quiet.map(({ i }) => overheads[i]!.thread)))} vs DetectorThread`,
    );
  } else if (quiet.length > 0) {
    console.log(`    every counted round ran with neighbours < ${BUSY_NEIGHBOURS} cores (e2e and the alone rounds around it)`);
  } else {
    console.log(`    no round ran with neighbours < ${BUSY_NEIGHBOURS} cores: the overhead above mostly measures how the background load moved`);
  }
  console.log(`load avg at the end ${loadavg()[0]!.toFixed(2)}`);
}

await main();
