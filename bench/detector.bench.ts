/**
 * Detector throughput on ONNX Runtime (CPU), next to an ONNX Runtime MatMul peak measured in the same run
 * and next to PyTorch at the same shapes. Prints a table (and JSON with --json); it is not a test.
 *
 *   npx tsx bench/detector.bench.ts                  # everything, 2 threads, spin-wait on
 *   npx tsx bench/detector.bench.ts --quick          # fewer runs, smaller budget
 *   npx tsx bench/detector.bench.ts --only paper-student1024 --batches 8 --algos direct,auto
 *   npx tsx bench/detector.bench.ts --threads 2 --spin off --json /tmp/bench.json
 *
 * Models (random weights, γ ≠ 0 so no subnet is trivially zero):
 *   edge-head          the edge preset's head (channels, map size, widths read from src/config/model-schema.ts;
 *                      at the time of writing C = 184 at 32×32, teacher hidden 64 (k 3,3,3,5), student 256 × 2 blocks) + map
 *   edge-detector      the fused edge detector: uint8 RGB at the preset's input size → the generated MobileNetV2
 *                      backbone (ensureDefaultBackbone with the preset's layers) → head → maps and scores
 *   paper-teacher      C = 304 at 24×24, hidden 64, kernels 3,3,3,5 (z only)
 *   paper-student256   C = 304 at 24×24, width 256, 4 residual blocks
 *   paper-student1024  C = 304 at 24×24, width 1024, 4 residual blocks (the paper's student)
 *   paper-head         teacher + width-1024 student + anomaly map and scores
 * Algorithms: `direct` builds every conv as ONNX Conv; `auto` is what the builders do by default
 * (Winograd F(4×4, 3×3) where it pays off, see src/model/fast-conv.ts); `winograd` forces it.
 * FLOPs are counted from the conv shapes as a direct convolution does them (2·MACs), so a fast algorithm
 * shows as "effective" GFLOP/s, possibly above the MatMul peak.
 */
import { spawn, spawnSync, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { readFile, writeFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { Graph, Value } from '../src/onnx/graph.js';
import * as op from '../src/onnx/ops.js';
import { decodeModel, encodeModel } from '../src/onnx/serialize.js';
import { f32 } from '../src/onnx/tensor.js';
import { modelParamsFor, PRESETS, type ModelParams } from '../src/config/model-schema.js';
import { RuntimeOptionsSchema } from '../src/config/runtime-schema.js';
import { sessionOptions } from '../src/runtime/session.js';
import { initStudent, initTeacher, seededRandom } from '../src/model/init.js';
import { positionalEncoding } from '../src/model/positional-encoding.js';
import { buildTeacherForward } from '../src/model/teacher-flow.js';
import { buildStudentInference } from '../src/model/student.js';
import { buildDetectorModel, buildHeadModel } from '../src/model/detector-graph.js';
import { ensureDefaultBackbone } from '../src/model/backbone/mobilenet-v2.js';
import { setFastConvDefaults, type ConvAlgorithm } from '../src/model/fast-conv.js';
import type { StudentWeights, TeacherWeights } from '../src/model/weights.js';
import { onnxConvFlops, studentFlops, teacherFlops } from './flops.js';

// ---------------------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------------------

const ALL_MODELS = ['edge-head', 'edge-detector', 'paper-teacher', 'paper-student256', 'paper-student1024', 'paper-head'] as const;
type ModelId = (typeof ALL_MODELS)[number];
/** `f6`: the default choices, but F(6×6, 3×3) for the student (faster at batch 8 on 24×24 maps). */
type Algo = ConvAlgorithm | 'auto' | 'f6';
const ALGOS: readonly Algo[] = ['direct', 'auto', 'winograd', 'f6'];

function useAlgo(a: Algo | undefined): void {
  if (a === undefined) setFastConvDefaults({});
  else if (a === 'f6') setFastConvDefaults({ algorithm: 'auto', studentTile: 6 });
  else setFastConvDefaults({ algorithm: a });
}

const { values: flags } = parseArgs({
  options: {
    threads: { type: 'string', default: '2' },
    spin: { type: 'string', default: 'on' },
    arena: { type: 'string', default: 'on' },
    'opt-level': { type: 'string', default: 'all' },
    'denormal-zero': { type: 'boolean', default: false },
    batches: { type: 'string', default: '1,8' },
    only: { type: 'string' },
    algos: { type: 'string', default: 'direct,auto,f6' },
    reps: { type: 'string' },
    warmup: { type: 'string' },
    budget: { type: 'string' },
    'peak-reps': { type: 'string' },
    'gap-ms': { type: 'string', default: '50' },
    torch: { type: 'string', default: 'on' },
    quick: { type: 'boolean', default: false },
    json: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});

if (flags.help) {
  console.log(`usage: npx tsx bench/detector.bench.ts [options]
  --threads N          ORT intra-op threads and torch.set_num_threads (default 2)
  --spin on|off        ORT worker spin-waiting (session.intra_op.allow_spinning; default on)
  --arena on|off       CPU memory arena (default on)
  --opt-level L        disabled|basic|extended|all (default all)
  --denormal-zero      session.set_denormal_as_zero = 1
  --batches 1,8        batch sizes (default 1,8)
  --only a,b           models: ${ALL_MODELS.join(', ')}
  --algos LIST         conv algorithms to build: direct | auto (the builders' default) | winograd (forced)
                       | f6 (auto with F(6,3) in the student; run for paper-student*/paper-head only);
                       default direct,auto,f6
  --reps N             timed runs per case (default 7; --quick 3); median reported
  --warmup N           untimed runs first (default 2; --quick 1)
  --budget S           stop timing a case after S seconds per algorithm once 3 runs are in (default 40; --quick 12)
                       (the algorithms of a case are timed round-robin, so background load hits all alike)
  --peak-reps N        MatMul peak: best of N (default 10)
  --gap-ms MS          idle pause before each timed run, so the previous runner's spinning threads sleep (default 50)
  --torch on|off       also time PyTorch (tools/reference/ast_reference.py) at the paper shapes, interleaved
                       with the ONNX Runtime runs of the same case (default on)
  --quick              fewer runs
  --json FILE          write every figure as JSON`);
  process.exit(0);
}

const threads = Number(flags.threads);
const spin = flags.spin !== 'off';
const quick = flags.quick;
const reps = Number(flags.reps ?? (quick ? 3 : 7));
const warmup = Number(flags.warmup ?? (quick ? 1 : 2));
const budgetMs = 1000 * Number(flags.budget ?? (quick ? 12 : 40));
const peakReps = Number(flags['peak-reps'] ?? (quick ? 5 : 10));
const gapMs = Number(flags['gap-ms']);
const batches = flags.batches.split(',').map(Number);
const models = (flags.only ? flags.only.split(',') : [...ALL_MODELS]) as ModelId[];
for (const m of models) if (!ALL_MODELS.includes(m)) throw new Error(`unknown model ${m}; one of ${ALL_MODELS.join(', ')}`);
const algos = flags.algos.split(',') as Algo[];
for (const a of algos) if (!ALGOS.includes(a)) throw new Error(`unknown algorithm ${a}; one of ${ALGOS.join(', ')}`);
/** Models whose student runs on 24×24 maps, where F(6, 3) differs from the default. */
const F6_MODELS: readonly ModelId[] = ['paper-student256', 'paper-student1024', 'paper-head'];
const optLevel = flags['opt-level'] as 'disabled' | 'basic' | 'extended' | 'all';

/** The authors' code on this machine class (2 threads, batch 8, C = 304, 24×24), as given in the issue. */
const AUTHORS_MS_BATCH8: Partial<Record<ModelId, number>> = {
  'paper-teacher': 153,
  'paper-student256': 177,
  'paper-student1024': 3100,
};
/** Which PyTorch measurement matches which model. */
const TORCH_MODEL: Partial<Record<ModelId, string>> = {
  'paper-teacher': 'teacher',
  'paper-student256': 'student256',
  'paper-student1024': 'student1024',
  'paper-head': 'paper-head',
};

// ---------------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------------

function ortOptions(): ort.InferenceSession.SessionOptions {
  const runtime = RuntimeOptionsSchema.parse({
    providers: [{ name: 'cpu', arena: flags.arena !== 'off' }],
    intraOpThreads: threads,
    interOpThreads: 1,
    spinWait: spin,
  });
  const base = sessionOptions(runtime, runtime.providers[0]!);
  const session = { ...(base.extra as { session?: Record<string, unknown> } | undefined)?.session };
  if (flags['denormal-zero']) session.set_denormal_as_zero = '1';
  return { ...base, graphOptimizationLevel: optLevel, enableCpuMemArena: flags.arena !== 'off', extra: { session } };
}

async function createSession(bytes: Uint8Array): Promise<{ session: ort.InferenceSession; loadMs: number }> {
  const t = performance.now();
  const session = await ort.InferenceSession.create(bytes, ortOptions());
  return { session, loadMs: performance.now() - t };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

interface Timing {
  medianMs: number;
  minMs: number;
  runsMs: number[];
  outputs: ort.InferenceSession.ReturnType;
}

async function time(session: ort.InferenceSession, feeds: Record<string, ort.Tensor>, nWarm = warmup, nReps = reps, budget = budgetMs): Promise<Timing> {
  let outputs = await session.run(feeds);
  for (let i = 1; i < nWarm; i++) outputs = await session.run(feeds);
  const runsMs: number[] = [];
  const start = performance.now();
  while (runsMs.length < nReps && (runsMs.length < 3 || performance.now() - start < budget)) {
    const t = performance.now();
    await session.run(feeds);
    runsMs.push(performance.now() - t);
  }
  return { medianMs: median(runsMs), minMs: Math.min(...runsMs), runsMs, outputs };
}

/** Something timed in the round-robin: an ONNX Runtime session or the PyTorch server. */
interface Runner {
  /** Untimed runs; returns the outputs of the last one (ORT) or undefined. */
  warm(): Promise<ort.InferenceSession.ReturnType | undefined>;
  /** One timed run, in ms. */
  run(): Promise<number>;
}

function ortRunner(session: ort.InferenceSession, feeds: Record<string, ort.Tensor>): Runner {
  return {
    async warm() {
      let out = await session.run(feeds);
      for (let i = 1; i < warmup; i++) out = await session.run(feeds);
      return out;
    },
    async run() {
      const t = performance.now();
      await session.run(feeds);
      return performance.now() - t;
    },
  };
}

interface RoundRobinTiming {
  medianMs: number;
  minMs: number;
  runsMs: number[];
  outputs: ort.InferenceSession.ReturnType | undefined;
}

/** Warm-up for each runner, then timed runs in turn until each has `reps` (or the budget is spent). */
async function timeRoundRobin(runners: Runner[]): Promise<RoundRobinTiming[]> {
  const outputs: (ort.InferenceSession.ReturnType | undefined)[] = [];
  for (const r of runners) outputs.push(await r.warm());
  const runs = runners.map(() => [] as number[]);
  const start = performance.now();
  while (runs[0]!.length < reps && (runs[0]!.length < 3 || performance.now() - start < budgetMs * runners.length)) {
    for (let i = 0; i < runners.length; i++) {
      // a pause first: spin-waiting worker threads of the previous runner (ORT pools, PyTorch's OpenMP)
      // go back to sleep instead of competing with this one
      if (gapMs > 0) await new Promise((resolve) => setTimeout(resolve, gapMs));
      runs[i]!.push(await runners[i]!.run());
    }
  }
  return runs.map((r, i) => ({ medianMs: median(r), minMs: Math.min(...r), runsMs: r, outputs: outputs[i] }));
}

// ---------------------------------------------------------------------------------------------------
// MatMul peak
// ---------------------------------------------------------------------------------------------------

function randomData(n: number, seed: number, scale = 1): Float32Array {
  const r = seededRandom(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (2 * r() - 1) * scale;
  return a;
}

const PEAK_N = 2048;

async function matmulPeak(): Promise<{ gflops: number; bestMs: number; medianMs: number }> {
  const g = new Graph('matmul_peak');
  const a = g.input('a', 'float32', [PEAK_N, PEAK_N]);
  g.output(op.matmul(g, a, g.initializer('b', f32([PEAK_N, PEAK_N], randomData(PEAK_N * PEAK_N, 1)))), 'y');
  const { session } = await createSession(encodeModel(g));
  const t = await time(session, { a: new ort.Tensor('float32', randomData(PEAK_N * PEAK_N, 2), [PEAK_N, PEAK_N]) }, 2, peakReps, 60_000);
  await session.release();
  return { gflops: (2 * PEAK_N ** 3) / t.minMs / 1e6, bestMs: t.minMs, medianMs: t.medianMs };
}

// ---------------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------------

interface Built {
  bytes: Uint8Array;
  feeds: (batch: number) => Record<string, ort.Tensor>;
  /** The output compared across algorithms. */
  checkOutput: string;
}

interface ModelCase {
  id: ModelId;
  /** Direct-convolution FLOPs per image. */
  flopsPerImage: number;
  build: () => Built;
  note: string;
}

const PAPER = { channels: 304, size: 24, hidden: 64, kernels: [3, 3, 3, 5], cond: 32 };
/** The edge preset as it stands in src/config/model-schema.ts (backbone layers, channels, input size). */
const EDGE = {
  channels: modelParamsFor('edge', 'rgb').featureChannels,
  size: Math.ceil(PRESETS.edge.inputSize / PRESETS.edge.backbone.stride),
  input: PRESETS.edge.inputSize,
  layers: PRESETS.edge.backbone.layers,
};

function teacherWeights(channels: number): TeacherWeights {
  return initTeacher({ channels, condChannels: 32, hidden: 64, kernelSizes: [3, 3, 3, 5], seed: 11, gamma: 0.1 });
}

function studentWeights(channels: number, width: number, blocks: number): StudentWeights {
  return initStudent({ inChannels: channels + 32, outChannels: channels, width, residualBlocks: blocks, seed: 12 });
}

function featureFeeds(channels: number, size: number): (batch: number) => Record<string, ort.Tensor> {
  return (batch) => ({
    features: new ort.Tensor('float32', randomData(batch * channels * size * size, 100 + batch, 2), [batch, channels, size, size]),
  });
}

/** x [N, C, s, s] and the positional encoding expanded over the batch, as the head does it. */
function partGraph(name: string, channels: number, size: number): { g: Graph; x: Value; pos: Value } {
  const g = new Graph(name);
  const x = g.input('features', 'float32', ['N', channels, size, size]);
  const batch = op.slice(g, op.shape(g, x), [0], [1], [0]);
  const expandShape = op.concat(g, [batch, op.ints(g, [1, 1, 1], 'ones3')], 0);
  const pe = positionalEncoding(32, size, size);
  const pos = op.expand(g, g.initializer('positional_encoding', f32([1, ...pe.dims], pe.data)), expandShape);
  return { g, x, pos };
}

const lazy = <T>(f: () => T) => {
  let v: T | undefined;
  return () => (v ??= f());
};

const paperTeacher = lazy(() => teacherWeights(PAPER.channels));
const paperStudent = new Map<number, StudentWeights>();
const paperStudentOf = (width: number) => {
  if (!paperStudent.has(width)) paperStudent.set(width, studentWeights(PAPER.channels, width, 4));
  return paperStudent.get(width)!;
};
const edgeTeacher = lazy(() => teacherWeights(EDGE.channels));
const edgeStudent = lazy(() => studentWeights(EDGE.channels, PRESETS.edge.student.width, PRESETS.edge.student.residualBlocks));

function edgeParams(): ModelParams {
  return modelParamsFor('edge', 'rgb');
}

async function makeCases(): Promise<ModelCase[]> {
  const cases: ModelCase[] = [];
  const paperT = { channels: PAPER.channels, cond: 32, hidden: 64, kernels: PAPER.kernels };
  const s = PAPER.size;
  for (const id of models) {
    switch (id) {
      case 'edge-head': {
        const p = edgeParams();
        cases.push({
          id,
          note: `C=${EDGE.channels} ${EDGE.size}×${EDGE.size}, teacher h${p.teacher.hidden}, student ${p.student.width}×${p.student.residualBlocks}`,
          flopsPerImage:
            teacherFlops({ channels: EDGE.channels, cond: 32, hidden: p.teacher.hidden, kernels: p.teacher.kernelSizes }, EDGE.size, EDGE.size) +
            studentFlops({ inChannels: EDGE.channels + 32, width: p.student.width, blocks: p.student.residualBlocks, outChannels: EDGE.channels }, EDGE.size, EDGE.size),
          build: () => ({
            bytes: buildHeadModel({ params: p, featureSize: { height: EDGE.size, width: EDGE.size }, teacher: edgeTeacher(), student: edgeStudent() }),
            feeds: featureFeeds(EDGE.channels, EDGE.size),
            checkOutput: 'map',
          }),
        });
        break;
      }
      case 'edge-detector': {
        const p = edgeParams();
        const backbone = await ensureDefaultBackbone({ layers: [...EDGE.layers] });
        const model = decodeModel(await readFile(backbone.file));
        const inputSize = EDGE.input;
        const backboneFlops = onnxConvFlops(model, backbone.input.name, inputSize, inputSize);
        cases.push({
          id,
          note: `uint8 ${inputSize}² → MobileNetV2 ${EDGE.layers.join(' + ')} (${(backboneFlops / 1e9).toFixed(2)} GFLOP) → edge head`,
          flopsPerImage:
            backboneFlops +
            teacherFlops({ channels: EDGE.channels, cond: 32, hidden: p.teacher.hidden, kernels: p.teacher.kernelSizes }, EDGE.size, EDGE.size) +
            studentFlops({ inChannels: EDGE.channels + 32, width: p.student.width, blocks: p.student.residualBlocks, outChannels: EDGE.channels }, EDGE.size, EDGE.size),
          build: () => ({
            bytes: buildDetectorModel({
              params: p,
              featureSize: { height: EDGE.size, width: EDGE.size },
              teacher: edgeTeacher(),
              student: edgeStudent(),
              input: { width: inputSize, height: inputSize, layout: 'NHWC', dtype: 'uint8', colorSpace: 'RGB', mean: backbone.input.mean, std: backbone.input.std },
              backbone: {
                spec: {
                  file: 'backbone.onnx',
                  name: backbone.family,
                  description: backbone.source,
                  inputName: backbone.input.name,
                  outputs: backbone.outputs.map((o) => ({ name: o.name, layer: o.layer, channels: o.channels, stride: o.stride })),
                },
                model,
              },
              smoothingSigma: p.scoring.smoothingSigma,
            }),
            feeds: (batch) => {
              const r = seededRandom(200 + batch);
              const data = new Uint8Array(batch * inputSize * inputSize * 3);
              for (let i = 0; i < data.length; i++) data[i] = Math.floor(r() * 256);
              return { image: new ort.Tensor('uint8', data, [batch, inputSize, inputSize, 3]) };
            },
            checkOutput: 'map',
          }),
        });
        break;
      }
      case 'paper-teacher':
        cases.push({
          id,
          note: `C=304 24×24, hidden 64, k 3,3,3,5`,
          flopsPerImage: teacherFlops(paperT, s, s),
          build: () => {
            const { g, x, pos } = partGraph('paper_teacher', PAPER.channels, s);
            g.output(buildTeacherForward(g, x, pos, paperTeacher(), { clamp: 1.9 }).z, 'z');
            return { bytes: encodeModel(g), feeds: featureFeeds(PAPER.channels, s), checkOutput: 'z' };
          },
        });
        break;
      case 'paper-student256':
      case 'paper-student1024': {
        const width = id === 'paper-student256' ? 256 : 1024;
        cases.push({
          id,
          note: `C=304 24×24, width ${width}, 4 residual blocks`,
          flopsPerImage: studentFlops({ inChannels: PAPER.channels + 32, width, blocks: 4, outChannels: PAPER.channels }, s, s),
          build: () => {
            const { g, x, pos } = partGraph(`paper_student${width}`, PAPER.channels, s);
            const out = buildStudentInference(g, op.concat(g, [pos, x], 1, 'student_input'), paperStudentOf(width), {
              params: { leakySlope: 0.01, bnEps: 1e-5 },
            });
            g.output(out, 'z_student');
            return { bytes: encodeModel(g), feeds: featureFeeds(PAPER.channels, s), checkOutput: 'z_student' };
          },
        });
        break;
      }
      case 'paper-head': {
        const p = modelParamsFor('paper', 'rgb');
        cases.push({
          id,
          note: `paper teacher + student 1024×4 + map`,
          flopsPerImage:
            teacherFlops(paperT, s, s) + studentFlops({ inChannels: PAPER.channels + 32, width: 1024, blocks: 4, outChannels: PAPER.channels }, s, s),
          build: () => ({
            bytes: buildHeadModel({ params: p, featureSize: { height: s, width: s }, teacher: paperTeacher(), student: paperStudentOf(1024) }),
            feeds: featureFeeds(PAPER.channels, s),
            checkOutput: 'map',
          }),
        });
        break;
      }
    }
  }
  return cases;
}

// ---------------------------------------------------------------------------------------------------
// PyTorch
// ---------------------------------------------------------------------------------------------------

interface TorchResult {
  model: string;
  batch: number;
  ms: number[];
}

function torchAvailable(): boolean {
  const r = spawnSync('/usr/bin/python3', ['-c', 'import torch'], { stdio: 'ignore' });
  return r.status === 0;
}

/**
 * bench/torch_reference.py --serve: PyTorch runs interleaved with the ONNX Runtime runs of the same case
 * (the server times each forward itself; one JSON line per request).
 */
class TorchServer {
  version = '';
  private readonly proc: ChildProcessByStdio<Writable, Readable, null>;
  private readonly pending: ((line: string) => void)[] = [];

  constructor() {
    const script = fileURLToPath(new URL('./torch_reference.py', import.meta.url));
    this.proc = spawn('/usr/bin/python3', [script, '--serve', '--threads', String(threads)], { stdio: ['pipe', 'pipe', 'inherit'] });
    createInterface({ input: this.proc.stdout }).on('line', (line) => this.pending.shift()?.(line));
  }

  private async request(msg: object): Promise<Record<string, unknown>> {
    const reply = new Promise<string>((resolve) => this.pending.push(resolve));
    this.proc.stdin.write(`${JSON.stringify(msg)}\n`);
    const parsed = JSON.parse(await reply) as Record<string, unknown>;
    if (parsed.error) throw new Error(`torch server: ${String(parsed.error)}`);
    return parsed;
  }

  /** Builds the model and inputs for a batch (untimed); returns a runner that times one forward. */
  async prepare(model: string, batch: number): Promise<Runner> {
    let prepared = false;
    return {
      warm: async () => {
        const r = await this.request({ cmd: 'prepare', model, batch, warmup: Math.max(1, warmup) });
        this.version = String(r.torch);
        prepared = true;
        return undefined;
      },
      run: async () => {
        if (!prepared) throw new Error('torch runner used before warm()');
        return Number((await this.request({ cmd: 'run' })).ms);
      },
    };
  }

  close(): void {
    this.proc.stdin.write(`${JSON.stringify({ cmd: 'quit' })}\n`);
    this.proc.stdin.end();
  }
}

// ---------------------------------------------------------------------------------------------------
// Goals of the issue (batch 8, the paper shapes)
// ---------------------------------------------------------------------------------------------------

function goalSummary(rows: Row[]): string[] {
  const out: string[] = [];
  const at8 = (m: ModelId) => rows.filter((r) => r.model === m && r.batch === 8);
  const s1024 = at8('paper-student1024').filter((r) => r.algo !== 'direct');
  if (s1024.length) {
    const parts = s1024.map((r) => `${r.algo} ${(100 * r.peakFraction).toFixed(0)}%`);
    const best = Math.max(...s1024.map((r) => r.peakFraction));
    out.push(`goal (i)  width-1024 student ≥ 60% of the MatMul peak (direct-conv FLOPs, N=8): ${parts.join(', ')} → ${best >= 0.6 ? 'met' : 'not met'}`);
  }
  for (const m of ['paper-teacher', 'paper-student256', 'paper-student1024'] as const) {
    const cand = at8(m).filter((r) => r.algo !== 'direct');
    if (!cand.length) continue;
    const fmtRow = (r: Row) => {
      const vsAuthors = r.authorsMs ? `${(r.medianMs / r.authorsMs).toFixed(2)}× authors' ${r.authorsMs} ms` : '';
      const vsTorch = r.torchMs ? `${(r.medianMs / r.torchMs).toFixed(2)}× PyTorch-now ${r.torchMs.toFixed(0)} ms` : '';
      return `${r.algo} ${r.medianMs.toFixed(0)} ms (${[vsAuthors, vsTorch].filter(Boolean).join(', ')})`;
    };
    const best = cand.reduce((a, b) => (b.medianMs < a.medianMs ? b : a));
    const authorsMet = best.authorsMs ? best.medianMs <= best.authorsMs / 2 : undefined;
    const torchMet = best.torchMs ? best.medianMs <= best.torchMs / 2 : undefined;
    out.push(
      `goal (ii) ${m} ≤ ½ of PyTorch: ${cand.map(fmtRow).join('; ')} → vs authors' figure ${authorsMet === undefined ? '—' : authorsMet ? 'met' : 'not met'}, vs PyTorch measured now ${torchMet === undefined ? '—' : torchMet ? 'met' : 'not met'}`,
    );
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Run
// ---------------------------------------------------------------------------------------------------

interface Row {
  model: ModelId;
  note: string;
  batch: number;
  algo: Algo;
  loadMs: number;
  medianMs: number;
  minMs: number;
  runsMs: number[];
  imagesPerSecond: number;
  gflop: number;
  gflops: number;
  peakFraction: number;
  /** max |out − out_direct| / max |out_direct| on the same input (non-direct rows). */
  relErrVsDirect?: number;
  torchMs?: number;
  oursOverTorch?: number;
  authorsMs?: number;
  oursOverAuthors?: number;
}

function maxRelErr(a: Float32Array, b: Float32Array): number {
  let scale = 1e-30;
  let worst = 0;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]!));
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return worst / scale;
}

const fmt = (v: number | undefined, digits = 1) => (v === undefined || !Number.isFinite(v) ? '—' : v.toFixed(digits));

function cpuName(): string {
  return cpus()[0]?.model ?? 'unknown CPU';
}

async function main() {
  const load0 = loadavg()[0]!;
  console.log(
    `ast-edge detector bench — onnxruntime-node ${ort.env.versions.common}, ${cpuName()} ×${cpus().length}, threads ${threads}, spin ${spin ? 'on' : 'off'}, ` +
      `arena ${flags.arena}, opt ${optLevel}${flags['denormal-zero'] ? ', denormal→0' : ''}; load avg ${load0.toFixed(2)}`,
  );
  if (load0 > 0.7) console.log(`note: load average ${load0.toFixed(2)} — other processes share these cores; figures will be noisy`);

  const peakStart = await matmulPeak();
  console.log(`MatMul peak (${PEAK_N}³ fp32, best of ${peakReps}): ${peakStart.gflops.toFixed(1)} GFLOP/s (${peakStart.bestMs.toFixed(1)} ms, median ${peakStart.medianMs.toFixed(1)} ms)`);

  const cases = await makeCases();
  const rows: Row[] = [];
  const torchResults: TorchResult[] = [];
  let torchServer: TorchServer | undefined;
  if (flags.torch !== 'off' && models.some((m) => TORCH_MODEL[m])) {
    if (torchAvailable()) torchServer = new TorchServer();
    else console.log('PyTorch: /usr/bin/python3 cannot import torch — skipped');
  }
  for (const c of cases) {
    for (const batch of batches) {
      // Every algorithm of a case is loaded first, then timed round-robin, so background load on a
      // shared machine hits all of them alike and their ratios stay meaningful.
      const variants: { algo: Algo; session: ort.InferenceSession; loadMs: number; built: Built }[] = [];
      for (const algo of algos) {
        if (algo === 'f6' && !F6_MODELS.includes(c.id)) continue;
        useAlgo(algo);
        const built = c.build();
        useAlgo(undefined);
        const { session, loadMs } = await createSession(built.bytes);
        variants.push({ algo, session, loadMs, built });
      }
      const feeds = variants[0]!.built.feeds(batch);
      const runners = variants.map((v) => ortRunner(v.session, feeds));
      const torchModel = TORCH_MODEL[c.id];
      if (torchServer && torchModel) runners.push(await torchServer.prepare(torchModel, batch));
      const timings = await timeRoundRobin(runners);
      if (torchServer && torchModel) {
        const t = timings[variants.length]!;
        torchResults.push({ model: torchModel, batch, ms: t.runsMs });
        console.log(`  ${c.id} N=${batch} PyTorch: ${t.medianMs.toFixed(1)} ms (min ${t.minMs.toFixed(1)}, ${t.runsMs.length} runs)`);
      }
      let directOut: Float32Array | undefined;
      variants.forEach((v, i) => {
        const t = timings[i]!;
        const out = t.outputs![v.built.checkOutput]!.data as Float32Array;
        if (v.algo === 'direct') directOut = out;
        const gflop = (c.flopsPerImage * batch) / 1e9;
        const row: Row = {
          model: c.id,
          note: c.note,
          batch,
          algo: v.algo,
          loadMs: v.loadMs,
          medianMs: t.medianMs,
          minMs: t.minMs,
          runsMs: t.runsMs,
          imagesPerSecond: (1000 * batch) / t.medianMs,
          gflop,
          gflops: gflop / (t.medianMs / 1000),
          peakFraction: 0,
          ...(v.algo !== 'direct' && directOut ? { relErrVsDirect: maxRelErr(out, directOut) } : {}),
        };
        rows.push(row);
        console.log(
          `  ${c.id} N=${batch} ${v.algo}: ${t.medianMs.toFixed(1)} ms (min ${t.minMs.toFixed(1)}, ${t.runsMs.length} runs, load ${(v.loadMs / 1000).toFixed(1)} s)` +
            (row.relErrVsDirect !== undefined ? `, max rel. diff vs direct ${row.relErrVsDirect.toExponential(1)}` : ''),
        );
      });
      for (const v of variants) await v.session.release();
    }
  }

  const peakEnd = await matmulPeak();
  const peak = Math.max(peakStart.gflops, peakEnd.gflops);
  console.log(`MatMul peak again at the end: ${peakEnd.gflops.toFixed(1)} GFLOP/s; using the better: ${peak.toFixed(1)} GFLOP/s`);
  for (const r of rows) r.peakFraction = r.gflops / peak;

  torchServer?.close();
  const torch = torchServer ? { version: torchServer.version, results: torchResults } : undefined;
  for (const r of rows) {
    const tm = TORCH_MODEL[r.model];
    const tr = torch?.results.find((x) => x.model === tm && x.batch === r.batch);
    if (tr) {
      r.torchMs = median(tr.ms);
      r.oursOverTorch = r.medianMs / r.torchMs;
    }
    const authors = r.batch === 8 ? AUTHORS_MS_BATCH8[r.model] : undefined;
    if (authors) {
      r.authorsMs = authors;
      r.oursOverAuthors = r.medianMs / authors;
    }
  }

  // Table
  const head = ['model', 'N', 'algo', 'ms', 'min ms', 'img/s', 'GFLOP', 'GFLOP/s', '%peak', 'diff/direct', 'torch ms', 'ours/torch', 'authors ms', 'ours/auth'];
  const body = rows.map((r) => [
    r.model,
    String(r.batch),
    r.algo,
    fmt(r.medianMs),
    fmt(r.minMs),
    fmt(r.imagesPerSecond, 2),
    fmt(r.gflop, 2),
    fmt(r.gflops, 1),
    fmt(100 * r.peakFraction, 0) + '%',
    r.relErrVsDirect === undefined ? '' : r.relErrVsDirect.toExponential(1),
    fmt(r.torchMs),
    fmt(r.oursOverTorch, 2),
    fmt(r.authorsMs, 0),
    fmt(r.oursOverAuthors, 2),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 3 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  console.log('');
  console.log(`MatMul peak ${peak.toFixed(1)} GFLOP/s (${PEAK_N}³ fp32, ${threads} threads). GFLOP = direct-convolution work per batch; %peak = GFLOP/s ÷ peak.`);
  console.log(line(head));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const b of body) console.log(line(b));
  console.log(`authors ms: the authors' PyTorch code on this machine class (2 threads, batch 8), as quoted in the issue; torch ms: PyTorch ${torch?.version ?? '(not run)'} measured now.`);
  const load1 = loadavg()[0]!;
  if (load1 > 0.7 + threads) console.log(`note: load average ${load1.toFixed(2)} at the end`);
  const goals = goalSummary(rows);
  if (goals.length) {
    console.log('');
    for (const line of goals) console.log(line);
  }

  if (flags.json) {
    const json = {
      date: new Date().toISOString(),
      onnxruntime: ort.env.versions.common,
      cpu: cpuName(),
      cores: cpus().length,
      settings: { threads, spin, arena: flags.arena !== 'off', optLevel, denormalZero: flags['denormal-zero'], reps, warmup, budgetMs },
      loadAverage: { start: load0, end: load1 },
      matmulPeak: { n: PEAK_N, start: peakStart, end: peakEnd, gflops: peak },
      torch: torch ? { version: torch.version, threads, results: torch.results } : null,
      authorsMsBatch8: AUTHORS_MS_BATCH8,
      rows,
    };
    await writeFile(flags.json, `${JSON.stringify(json, null, 2)}\n`);
    console.log(`wrote ${flags.json}`);
  }
}

await main();
