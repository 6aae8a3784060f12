/**
 * One GStreamer pipeline delivering Frames, kept alive: it restarts the pipeline with exponential
 * backoff after an error, the end of a live stream, or a stall, and stops cleanly. This is the only
 * module that touches the native binding (gstreamer-superficial); everything else gets Frames.
 *
 * What the binding does, read in its source (Pipeline.cpp, GObjectWrap.cpp) and checked here:
 * - `appsink.pull(cb)` runs gst_app_sink_pull_sample on a libuv pool thread and calls back with a
 *   *copy* of the buffer and the caps as an object; no PTS. It returns null at EOS (also after an
 *   error: the source sends EOS downstream) and immediately once the pipeline is stopped, including
 *   for a pull started after stop(), so a pull loop ends by itself and never crashes on a torn-down
 *   pipeline.
 * - `pipeline.pollBus(cb)` pops one bus message per pool-thread job and queues the next job only if
 *   the pipeline is not in NULL *when the callback (and its microtasks) returns*. A poll can therefore
 *   stay blocked after stop() when the shutdown messages were flushed before it woke, and it dies
 *   silently when a pipeline fails to leave NULL (a missing V4L2 device fails inside play()).
 *   Both pulls and bus polls block pool threads: two per pipeline (see `threadPoolAdvice`).
 * - The native Pipeline is never freed (pollBus takes a reference it never drops): building a new one
 *   per restart leaked ~0.6 MB each time in a check, so one pipeline is built per launch string and
 *   restarted NULL → PLAYING (memory flat over 300 restarts).
 * To keep the bus bookkeeping exact, native play()/stop() are never called from inside a native
 * callback: teardowns are deferred to a macrotask.
 */
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { StreamSource } from '../config/agent-schema.js';
import { CameraError } from './camera-error.js';
import { packRows, type Frame } from './frame.js';
import { StagingFolder, isPrintfPattern, resolvePattern, type ImageSequence } from './image-sequence.js';
import {
  APPSINK_NAME,
  buildLaunchString,
  describeSource,
  explainLaunchError,
  hintForRuntimeError,
  isFiniteSource,
  type OutputSpec,
} from './launch-string.js';
import type { StreamName } from './rgbd-pairer.js';

// ---- the binding's surface (it ships no types) ------------------------------------------------------

interface BusMessage {
  type: string;
  _src_element_name?: string;
  message?: string;
  debug?: string;
  [field: string]: unknown;
}
type Caps = Record<string, unknown>;
interface NativeAppSink {
  pull(callback: (buffer: Buffer | null, caps: Caps) => void): void;
}
interface NativePipeline {
  play(): void;
  pause(): void;
  stop(): void;
  findChild(name: string): unknown;
  pollBus(callback: (message: BusMessage) => void): void;
}
interface Binding {
  Pipeline: new (launch: string) => NativePipeline;
}

let binding: Binding | undefined;

/** Loaded on first use, so modules that only pair or describe frames never load GStreamer. */
function loadBinding(sourceDescription: string): Binding {
  try {
    binding ??= createRequire(import.meta.url)('gstreamer-superficial') as Binding;
    return binding;
  } catch (error) {
    throw new CameraError(
      `the GStreamer binding (npm gstreamer-superficial) does not load: ${(error as Error).message}; it needs ` +
        'libgstreamer1.0-dev and libgstreamer-plugins-base1.0-dev at install and its install script approved',
      sourceDescription,
      'pipeline',
      { cause: error },
    );
  }
}

// ---- one native pipeline, restartable ---------------------------------------------------------------

interface RunHandlers {
  sample(buffer: Buffer, caps: Caps, capturedAt: number, capturedAtWall: number): void;
  message(message: BusMessage): void;
  /** The appsink returned no sample while playing: EOS, an error, or a pipeline that never started. */
  pullEnded(): void;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
/** Leaves the current native callback (and its microtasks) before touching the pipeline's state. */
const nextMacrotask = () => new Promise<void>((resolve) => setImmediate(resolve));

class NativeRunner {
  private readonly pipeline: NativePipeline;
  private readonly sink: NativeAppSink;
  /** Our view of the native state: true between play() and stop(). */
  private playing = false;
  private run = 0;
  private handlers: RunHandlers | null = null;
  private pullInFlight = false;
  private pullIdleWaiters: (() => void)[] = [];
  /** Live bus polls: id → the run in which each last delivered a message (-1: none yet). */
  private readonly busPolls = new Map<number, number>();
  private nextPollId = 0;
  /** Receives messages delivered while not playing (draining a failed start). */
  private idleListener: ((message: BusMessage) => void) | null = null;

  constructor(
    readonly launch: string,
    sourceDescription: string,
  ) {
    const { Pipeline } = loadBinding(sourceDescription);
    try {
      this.pipeline = new Pipeline(launch);
    } catch (error) {
      throw explainLaunchError((error as Error).message, launch, sourceDescription);
    }
    const sink = this.pipeline.findChild(APPSINK_NAME) as Partial<NativeAppSink> | undefined;
    if (typeof sink?.pull !== 'function') {
      throw new CameraError(`the pipeline has no appsink named ${APPSINK_NAME}: ${launch}`, sourceDescription, 'pipeline');
    }
    this.sink = sink as NativeAppSink;
  }

  play(handlers: RunHandlers): void {
    this.run++;
    this.handlers = handlers;
    this.playing = true;
    if (this.busPolls.size === 0) this.startBusPoll();
    this.pipeline.play();
    this.pullNext(this.run);
  }

  /**
   * Native stop (synchronous: the pipeline is in NULL on return). `failedStart`: the pipeline never left
   * NULL, so every bus poll that delivered a message in this run has ended.
   */
  stop(failedStart = false): void {
    if (failedStart) {
      for (const [id, run] of this.busPolls) if (run === this.run) this.busPolls.delete(id);
    }
    this.playing = false;
    this.handlers = null;
    this.pipeline.stop();
  }

  /** Resolves once no pull is in flight (it returns promptly after stop()); false on timeout. */
  async whenPullIdle(timeoutMs: number): Promise<boolean> {
    if (!this.pullInFlight) return true;
    let timer: NodeJS.Timeout | undefined;
    const idle = new Promise<boolean>((resolve) => this.pullIdleWaiters.push(() => resolve(true)));
    const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
    const result = await Promise.race([idle, timeout]);
    clearTimeout(timer);
    return result;
  }

  /**
   * After a failed start the error is still queued on the bus (no poll was left to read it): read the
   * queue one message per poll (each poll ends, the pipeline being in NULL) until it runs dry. The last
   * poll stays blocked and serves the next run. This also keeps stale messages out of the next run.
   */
  async drainBus(maxMessages = 32, waitMs = 150): Promise<BusMessage[]> {
    if (this.playing) throw new Error('drainBus needs a stopped pipeline');
    const messages: BusMessage[] = [];
    try {
      while (messages.length < maxMessages) {
        if (this.busPolls.size > 0) break; // a blocked poll would take the next message instead
        const next = new Promise<BusMessage | null>((resolve) => {
          this.idleListener = resolve;
          setTimeout(() => resolve(null), waitMs);
        });
        this.startBusPoll();
        const message = await next;
        if (!message) break;
        messages.push(message);
      }
    } finally {
      this.idleListener = null;
    }
    return messages;
  }

  /**
   * Final shutdown: stopped pipeline, no pull in flight, and no bus poll left blocked (a blocked pool
   * job holds a thread and keeps the process alive). A poll blocked in NULL is woken by briefly
   * pausing: the state change posts messages, which the blocked polls take before the pipeline is
   * back in NULL; the main thread waits for them in between, since a callback arriving while paused
   * would queue yet another poll.
   */
  async close(): Promise<void> {
    if (this.playing) this.stop();
    await this.whenPullIdle(2000);
    for (let attempt = 0; attempt < 3 && this.busPolls.size > 0; attempt++) {
      this.pipeline.pause();
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
      this.pipeline.stop();
      await sleep(50);
    }
  }

  get blockedBusPolls(): number {
    return this.playing ? 0 : this.busPolls.size;
  }

  private startBusPoll(): void {
    const id = this.nextPollId++;
    this.busPolls.set(id, -1);
    this.pipeline.pollBus((message) => this.onBusMessage(id, message));
  }

  private onBusMessage(id: number, message: BusMessage): void {
    if (!this.playing) {
      // The binding queues no further poll for a pipeline in NULL: this poll has ended.
      this.busPolls.delete(id);
      this.idleListener?.(message);
      return;
    }
    this.busPolls.set(id, this.run);
    this.handlers?.message(message);
  }

  private pullNext(run: number): void {
    this.pullInFlight = true;
    this.sink.pull((buffer, caps) => {
      const capturedAt = performance.now();
      const capturedAtWall = Date.now();
      const current = run === this.run && this.playing;
      if (current && buffer) {
        this.handlers?.sample(buffer, caps, capturedAt, capturedAtWall);
        if (run === this.run && this.playing) return this.pullNext(run);
      }
      this.pullInFlight = false;
      for (const resolve of this.pullIdleWaiters.splice(0)) resolve();
      if (current && !buffer) this.handlers?.pullEnded();
    });
  }
}

// ---- the kept-alive frame source -------------------------------------------------------------------

export type SourceState = 'starting' | 'running' | 'reconnecting' | 'ended' | 'stopped';

/** Why the last run ended. */
export type RunEndCause = 'error' | 'eos' | 'stall' | 'restart' | 'unavailable';

export interface SourceStatus {
  stream: StreamName;
  description: string;
  state: SourceState;
  /** Why the stream is not running: GStreamer's error text, "end of stream", "no frame for 5000 ms"… */
  reason?: string;
  cause?: RunEndCause;
  /** `reconnecting`: ms until the next attempt. */
  retryInMs?: number;
  /** Frames delivered since creation. */
  frames: number;
  /** Restarts after a failure or on request. */
  reconnects: number;
  /** performance.now() of the last frame. */
  lastFrameAt?: number;
  /** Folder sources: images found at the last (re)start. */
  images?: number;
}

export interface GstFrameSourceOptions {
  source: StreamSource;
  output: OutputSpec;
  reconnect: { initialMs: number; maxMs: number };
  /** Which stream of the camera this is (labels states and logs). */
  stream?: StreamName;
  /** No frame for this long while running: restart. Default: 5 s, or 5 frame intervals if longer. */
  stallMs?: number;
  /** No first frame this long after (re)starting: restart. Default: 10 s (an RTSP connect), or stallMs if longer. */
  startTimeoutMs?: number;
  logger?: Logger;
}

interface Run {
  gotFrame: boolean;
  ending: boolean;
  /** The bus reported EOS; the run ends when the appsink has handed over its last frame. */
  eosSeen: boolean;
  /** The appsink returned no sample; the run ends as soon as the bus says why (or after a grace). */
  pullEnded: boolean;
  timer: NodeJS.Timeout | undefined;
}

/** How long a pull that came back empty may wait for the bus to say why (EOS or error). */
const PULL_END_GRACE_MS = 300;

export class GstFrameSource {
  readonly stream: StreamName;
  readonly description: string;
  private readonly source: StreamSource;
  private readonly output: OutputSpec;
  private readonly reconnect: { initialMs: number; maxMs: number };
  private readonly stallMs: number;
  private readonly startTimeoutMs: number;
  private readonly logger: Logger | undefined;
  private readonly frameListeners = new Set<(frame: Frame) => void>();
  private readonly stateListeners = new Set<(status: SourceStatus) => void>();

  private current: SourceStatus;
  private nextIndex = 0;
  private backoffMs: number;
  private runner: NativeRunner | undefined;
  private staging: StagingFolder | undefined;
  /** A folder source's images in read order, and frames of the current run (labels frames by file). */
  private runFiles: string[] | undefined;
  private runFrames = 0;
  private run: Run | null = null;
  private teardown: Promise<void> = Promise.resolve();
  private retryTimer: NodeJS.Timeout | undefined;
  /** A restart requested by the caller: its delay replaces the backoff once. */
  private requestedDelayMs: number | undefined;
  private started = false;
  private stopping: Promise<void> | null = null;

  constructor(options: GstFrameSourceOptions) {
    this.source = options.source;
    this.output = options.output;
    this.reconnect = options.reconnect;
    this.stream = options.stream ?? 'colour';
    this.description = describeSource(options.source);
    this.logger = options.logger?.child({ stream: this.stream, source: this.description });
    const frameInterval = 'fps' in this.source ? 1000 / this.source.fps : 0;
    this.stallMs = options.stallMs ?? Math.max(5000, 5 * frameInterval);
    this.startTimeoutMs = options.startTimeoutMs ?? Math.max(10_000, this.stallMs);
    this.backoffMs = this.reconnect.initialMs;
    this.current = { stream: this.stream, description: this.description, state: 'stopped', frames: 0, reconnects: 0 };
    // Refuse what can never work before anything starts (a custom pipeline with its own appsink…).
    buildLaunchString(this.source, this.output, { pattern: '%d.png', startIndex: 0, codec: 'png' });
  }

  get status(): SourceStatus {
    return { ...this.current };
  }

  onFrame(listener: (frame: Frame) => void): () => void {
    this.frameListeners.add(listener);
    return () => this.frameListeners.delete(listener);
  }

  onState(listener: (status: SourceStatus) => void): () => void {
    this.stateListeners.add(listener);
    return () => this.stateListeners.delete(listener);
  }

  /**
   * Starts the first run. Throws a CameraError when that first attempt shows the configuration cannot
   * work (missing element, empty or mixed folder, missing device); later failures are retried.
   */
  start(): void {
    if (this.started) return;
    this.started = true;
    try {
      this.startRun(true);
    } catch (error) {
      this.started = false;
      this.current = { ...this.current, state: 'stopped', reason: (error as Error).message };
      this.staging?.dispose();
      throw error;
    }
  }

  /**
   * Tears the current run down and starts again after `delayMs` (no backoff): for an RGB-D pairing by
   * order, whose streams must restart together. Ignored once ended or stopped.
   */
  restart(reason: string, delayMs = 0): void {
    if (!this.started || this.stopping || this.current.state === 'ended') return;
    this.requestedDelayMs = delayMs;
    if (this.run && !this.run.ending) {
      this.endRun(this.run, 'restart', reason);
    } else if (this.retryTimer) {
      clearTimeout(this.retryTimer);
      this.scheduleRetry('restart', reason);
    }
  }

  /**
   * Stops for good. The 'stopped' state is the last callback; once the promise resolves the pipeline
   * is in NULL, no native request is pending, and the staging folder (if any) is gone.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      clearTimeout(this.retryTimer);
      if (this.run) {
        clearTimeout(this.run.timer);
        this.run.ending = true;
      }
      this.run = null;
      this.setState({ state: 'stopped', reason: undefined, cause: undefined, retryInMs: undefined });
      this.frameListeners.clear();
      this.stateListeners.clear();
      await this.teardown;
      await nextMacrotask();
      await this.runner?.close();
      if ((this.runner?.blockedBusPolls ?? 0) > 0) {
        this.logger?.debug('a GStreamer bus poll is still blocked after stop (it ends with the process)');
      }
      this.staging?.dispose();
    })();
    return this.stopping;
  }

  // ---- runs ---------------------------------------------------------------------------------------

  private startRun(first: boolean): void {
    this.retryTimer = undefined;
    this.setState({ state: 'starting', retryInMs: undefined });
    let runner: NativeRunner;
    try {
      const images = this.prepareInput();
      if (images?.count !== undefined) this.current.images = images.count;
      this.runFiles = images?.files;
      this.runFrames = 0;
      const launch = buildLaunchString(this.source, this.output, images);
      if (this.runner?.launch !== launch) {
        this.logger?.debug({ launch }, 'building pipeline');
        const previous = this.runner;
        this.runner = new NativeRunner(launch, this.description);
        void previous?.close();
      }
      runner = this.runner;
    } catch (error) {
      if (first) throw error;
      this.scheduleRetry('unavailable', (error as Error).message);
      return;
    }
    const run: Run = { gotFrame: false, ending: false, eosSeen: false, pullEnded: false, timer: undefined };
    this.run = run;
    run.timer = setTimeout(
      () => this.endRun(run, 'stall', `no frame within ${this.startTimeoutMs} ms of starting`),
      this.startTimeoutMs,
    );
    runner.play({
      sample: (buffer, caps, at, wall) => this.onSample(run, buffer, caps, at, wall),
      message: (message) => this.onBusMessage(run, message),
      pullEnded: () => this.onPullEnded(run),
    });
  }

  private prepareInput(): ImageSequence | undefined {
    const source = this.source;
    if (source.kind === 'v4l2' && !fs.existsSync(source.device)) {
      // v4l2src fails inside play() for a missing node, where the binding loses the error text.
      throw new CameraError(`the device ${source.device} does not exist (camera unplugged?)`, this.description, 'device');
    }
    if (source.kind !== 'file') return undefined;
    if (isPrintfPattern(source.path)) return resolvePattern(source.path, this.description);
    let isFolder = false;
    try {
      isFolder = fs.statSync(source.path).isDirectory();
    } catch {
      throw new CameraError(`the folder ${source.path} does not exist`, this.description, 'input');
    }
    if (!isFolder) {
      throw new CameraError(
        `${source.path} is neither a folder of images nor a printf pattern such as /data/part-%05d.png`,
        this.description,
        'config',
      );
    }
    this.staging ??= new StagingFolder(this.description);
    return this.staging.stage(source.path);
  }

  private onSample(run: Run, buffer: Buffer, caps: Caps, capturedAt: number, capturedAtWall: number): void {
    if (run !== this.run || run.ending) return;
    const { format, width, height } = this.output;
    if (caps.format !== format || caps.width !== width || caps.height !== height) {
      this.endRun(run, 'error', `the appsink delivered ${String(caps.format)} ${String(caps.width)}x${String(caps.height)}, expected ${format} ${width}x${height}`);
      return;
    }
    const data = packRows(buffer, width, height, format);
    if ('error' in data) {
      this.endRun(run, 'error', data.error);
      return;
    }
    const frame: Frame = { format, width, height, data, capturedAt, capturedAtWall, index: this.nextIndex++ };
    const files = this.runFiles;
    if (files && files.length > 0) frame.label = path.basename(files[this.runFrames % files.length]!);
    this.runFrames++;
    this.current.frames++;
    this.current.lastFrameAt = capturedAt;
    if (!run.gotFrame) {
      run.gotFrame = true;
      this.backoffMs = this.reconnect.initialMs; // frames flow again
      clearTimeout(run.timer);
      run.timer = setTimeout(() => this.endRun(run, 'stall', `no frame for ${this.stallMs} ms`), this.stallMs);
      this.setState({ state: 'running', reason: undefined, cause: undefined });
    } else {
      run.timer?.refresh();
    }
    for (const listener of this.frameListeners) {
      try {
        listener(frame);
      } catch (error) {
        this.logger?.error({ err: error }, 'a frame listener threw');
      }
    }
  }

  private onBusMessage(run: Run, message: BusMessage): void {
    if (run !== this.run || run.ending) return;
    if (message.type === 'error') {
      this.endRun(run, 'error', describeBusError(message));
    } else if (message.type === 'eos') {
      // appsink (wait-on-eos) posts EOS once its queue is empty, but the pull carrying the last frame
      // may still be on its way back: end when the pull comes back empty, or after a grace.
      run.eosSeen = true;
      if (run.pullEnded) this.endRun(run, 'eos', 'end of stream');
      else setTimeout(() => this.endRun(run, 'eos', 'end of stream'), 4 * PULL_END_GRACE_MS);
    } else if (message.type === 'warning') {
      this.logger?.warn({ gst: describeBusError(message) }, 'GStreamer warning');
    }
  }

  private onPullEnded(run: Run): void {
    if (run !== this.run || run.ending) return;
    run.pullEnded = true;
    if (run.eosSeen) {
      this.endRun(run, 'eos', 'end of stream');
      return;
    }
    // Normally the bus explains within milliseconds (EOS or an error); silence means the pipeline
    // never left NULL (its error is still queued on the bus: see NativeRunner.drainBus).
    setTimeout(() => this.endRun(run, 'error', '', true), PULL_END_GRACE_MS);
  }

  /** Ends a run once (first cause wins); the native teardown happens outside the native callback. */
  private endRun(run: Run, cause: RunEndCause, reason: string, neverStarted = false): void {
    if (run.ending || run !== this.run) return;
    run.ending = true;
    clearTimeout(run.timer);
    const runner = this.runner!;
    this.teardown = (async () => {
      await nextMacrotask();
      if (this.stopping) return;
      runner.stop(neverStarted);
      if (neverStarted) {
        const error = (await runner.drainBus()).find((m) => m.type === 'error');
        reason = error
          ? describeBusError(error)
          : 'the pipeline stopped without saying why (an element failed to start: device missing or busy?)';
      }
      if (!(await runner.whenPullIdle(2000))) this.logger?.warn('an appsink pull did not return after stop');
      if (this.stopping) return;
      this.run = null;
      if (isFiniteSource(this.source) && cause !== 'restart' && cause !== 'stall') {
        // A finite replay ends at its end, and also at an error: starting over would repeat images.
        this.setState({ state: 'ended', reason, cause });
        return;
      }
      this.scheduleRetry(cause, reason);
    })();
    this.teardown.catch((error: unknown) => this.logger?.error({ err: error }, 'pipeline teardown failed'));
  }

  private scheduleRetry(cause: RunEndCause, reason: string): void {
    let delay: number;
    if (this.requestedDelayMs !== undefined) {
      delay = this.requestedDelayMs;
      this.requestedDelayMs = undefined;
    } else {
      delay = this.backoffMs;
      this.backoffMs = Math.min(this.backoffMs * 2, this.reconnect.maxMs);
    }
    this.current.reconnects++;
    const log = cause === 'restart' ? this.logger?.info.bind(this.logger) : this.logger?.warn.bind(this.logger);
    log?.({ cause, reason, retryInMs: delay }, 'camera stream restarting');
    this.setState({ state: 'reconnecting', cause, reason, retryInMs: delay });
    this.retryTimer = setTimeout(() => this.startRun(false), delay);
  }

  private setState(change: Partial<SourceStatus>): void {
    Object.assign(this.current, change);
    const snapshot = this.status;
    for (const listener of this.stateListeners) {
      try {
        listener(snapshot);
      } catch (error) {
        this.logger?.error({ err: error }, 'a state listener threw');
      }
    }
  }
}

/** GStreamer's error text, the useful last line of its debug text, and a hint where one helps. */
function describeBusError(message: BusMessage): string {
  const element = message._src_element_name ? `${message._src_element_name}: ` : '';
  const debugTail = typeof message.debug === 'string' && message.debug.includes('\n') ? message.debug.split('\n').pop()!.trim() : '';
  const text = `${element}${message.message ?? message.type}${debugTail ? ` (${debugTail})` : ''}`;
  const hint = hintForRuntimeError(`${message.message ?? ''} ${message.debug ?? ''}`);
  return hint ? `${text}; ${hint}` : text;
}

/**
 * Every pipeline keeps about two libuv pool threads blocked (a pull waiting for the next frame, a bus
 * poll waiting for the next message). With Node's default pool of 4, one RGB-D camera takes all of
 * them and every fs/crypto/zlib call and native async work queued behind them waits up to a frame
 * interval (measured: 1 s per readFile at 2 fps). bin/ast-agent.js raises UV_THREADPOOL_SIZE to 16 unless
 * it is set (from an ES module it would be too late: the loader already used the pool). Returns advice when
 * it is too small for `pipelines` (an operator's own, smaller value).
 */
export function threadPoolAdvice(pipelines: number): string | undefined {
  const size = Number(process.env.UV_THREADPOOL_SIZE) || 4;
  // Two threads left for file writes (outbox), DNS and sharp is enough; fewer and they queue.
  const needed = 2 * pipelines + 2;
  if (size >= needed) return undefined;
  return (
    `UV_THREADPOOL_SIZE is ${size}: ${pipelines} GStreamer pipeline(s) keep ~${2 * pipelines} libuv pool threads ` +
    `blocked, which delays file, crypto and other native async work; start Node with UV_THREADPOOL_SIZE=${needed} or more`
  );
}
