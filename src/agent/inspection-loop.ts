/**
 * The inspection loop: frames in, one verdict per part out, on time or failed safe.
 *
 * - Triggers: `continuous` inspects every n-th frame; `external` inspects the first frame captured after
 *   a part-present message, for that part id.
 * - Back-pressure: at most `queueLength` parts wait for the detector. Beyond that the oldest waiting frame
 *   is dropped and counted (continuous), or its part is failed with verdict `error` (external: a part is
 *   never dropped silently).
 * - Deadline: every part has a timer; a part without a verdict `deadlineMs` after capture (or after its
 *   trigger) gets verdict `error` and its late score, if any, is only counted.
 * - Model swap: `swapModel` takes effect between two detector runs, so no part is scored by a half-loaded
 *   model and none is lost.
 */
import type { Logger } from 'pino';
import type { CapturedFrame } from '../camera/index.js';
import type { AgentConfig } from '../config/agent-schema.js';
import type { InspectionRecord } from '../config/result-schema.js';
import { judge, rawThresholdFromNormalized } from '../model/verdict.js';
import type { InspectionOutcome, ResultSink } from '../publish/result-sink.js';
import type { FrameScorer } from '../runtime/detector-thread.js';
import { depthInputsFor, type RawDepthFrame } from '../runtime/depth-inputs.js';
import type { AgentMetrics } from './agent-metrics.js';
import type { SequenceStore } from './sequence-store.js';

export class InspectionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InspectionError';
  }
}

interface Part {
  frame: CapturedFrame | null;
  partId: string | null;
  /** A part announced by an external trigger: never dropped silently (a continuous frame is only counted). */
  triggered: boolean;
  /** Monotonic ms the deadline counts from (capture, or the trigger in external mode). */
  startedAt: number;
  capturedAtWall: number;
  settled: boolean;
  timer: NodeJS.Timeout | null;
}

interface PendingTrigger {
  partId: string;
  at: number;
  atWall: number;
  timer: NodeJS.Timeout;
}

export interface InspectionLoopOptions {
  station: string;
  inspection: AgentConfig['inspection'];
  /** Metres per depth unit, for RGB-D and depth models. */
  metresPerUnit?: number;
}

export class InspectionLoop {
  private readonly queue: Part[] = [];
  private readonly triggers: PendingTrigger[] = [];
  /** Parts in the detector run now, and since when (a run that never returns means a wedged provider). */
  private inFlight: Part[] = [];
  private runStartedAt: number | null = null;
  private frameCount = 0;
  private running = false;
  private accepting = true;
  private nextModel: { detector: FrameScorer; done: (old: FrameScorer) => void } | null = null;
  private idle: (() => void) | null = null;
  /** Raw threshold override (run-time setting); null: the bundle's calibrated threshold. */
  private thresholdOverride: number | null = null;

  constructor(
    private model: FrameScorer,
    private readonly sinks: readonly ResultSink[],
    private readonly sequence: SequenceStore,
    private readonly metrics: AgentMetrics,
    private readonly options: InspectionLoopOptions,
    private readonly logger: Logger,
  ) {
    calibrationOf(model);
  }

  get detector(): FrameScorer {
    return this.model;
  }

  /** How long the current detector run has taken so far (0 when idle). */
  get runningForMs(): number {
    return this.runStartedAt === null ? 0 : performance.now() - this.runStartedAt;
  }

  get queued(): number {
    return this.queue.length;
  }

  /** The raw threshold in force. */
  get threshold(): number {
    return this.thresholdOverride ?? calibrationOf(this.model).threshold;
  }

  /** Sets the threshold as a normalised score in (0, 1) or a raw score; null returns to the calibrated one. */
  setThreshold(value: { normalized: number } | { raw: number } | null): number {
    if (value === null) this.thresholdOverride = null;
    else if ('raw' in value) {
      if (!(Number.isFinite(value.raw) && value.raw >= 0)) throw new InspectionError(`raw threshold must be a finite number ≥ 0, got ${value.raw}`);
      this.thresholdOverride = value.raw;
    } else this.thresholdOverride = rawThresholdFromNormalized(value.normalized, calibrationOf(this.model));
    return this.threshold;
  }

  /** A frame from the camera. Never blocks; decides whether it becomes a part. */
  offerFrame(frame: CapturedFrame): void {
    if (!this.accepting) return;
    const mode = this.options.inspection.trigger;
    if (mode.mode === 'continuous') {
      if (this.frameCount++ % mode.every !== 0) {
        this.metrics.countDrop('skipped');
        return;
      }
      this.enqueue({ frame, partId: frame.colour.label ?? null, triggered: false, startedAt: frame.colour.capturedAt, capturedAtWall: frame.colour.capturedAtWall, settled: false, timer: null });
      return;
    }
    // External trigger: the oldest waiting part takes the first frame captured after its trigger.
    const index = this.triggers.findIndex((t) => frame.colour.capturedAt >= t.at);
    if (index < 0) return;
    const [t] = this.triggers.splice(index, 1);
    clearTimeout(t!.timer);
    this.enqueue({ frame, partId: t!.partId, triggered: true, startedAt: t!.at, capturedAtWall: frame.colour.capturedAtWall, settled: false, timer: null });
  }

  /** A part-present message (external trigger mode). */
  trigger(partId: string, at = performance.now()): void {
    if (!this.accepting) {
      // A part announced while stopping still gets its verdict: a reject.
      const part: Part = { frame: null, partId, triggered: true, startedAt: at, capturedAtWall: Date.now(), settled: false, timer: null };
      this.failSoon(part, 'agent shutting down before a frame was captured');
      return;
    }
    if (this.options.inspection.trigger.mode !== 'external') throw new InspectionError('trigger messages need inspection.trigger.mode = external');
    const maxWait = this.options.inspection.trigger.maxWaitMs;
    const pending: PendingTrigger = {
      partId,
      at,
      atWall: Date.now() - (performance.now() - at),
      timer: setTimeout(() => {
        const i = this.triggers.indexOf(pending);
        if (i < 0) return;
        this.triggers.splice(i, 1);
        const part: Part = { frame: null, partId, triggered: true, startedAt: at, capturedAtWall: pending.atWall, settled: false, timer: null };
        this.failSoon(part, `no frame within ${maxWait} ms of the trigger (camera down?)`);
      }, maxWait),
    };
    this.triggers.push(pending);
  }

  private enqueue(part: Part): void {
    this.metrics.countFrame('inspected');
    while (this.queue.length >= this.options.inspection.queueLength) {
      const dropped = this.queue.shift()!;
      clearTimeout(dropped.timer!);
      if (!dropped.triggered) {
        this.metrics.countDrop('overload');
        dropped.settled = true;
      } else {
        this.failSoon(dropped, 'overload: the detector fell behind and the part was dropped from the queue');
      }
    }
    const remaining = part.startedAt + this.options.inspection.deadlineMs - performance.now();
    part.timer = setTimeout(() => this.failSoon(part, `deadline of ${this.options.inspection.deadlineMs} ms missed`), Math.max(0, remaining));
    this.queue.push(part);
    this.metrics.queueDepth.set(this.queue.length);
    this.pump().catch((e: Error) => this.logger.error({ err: e }, 'inspection loop failed'));
  }

  /** Runs the detector while parts wait; one run at a time. */
  private async pump(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      for (;;) {
        this.applyModelSwap();
        const batch: Part[] = [];
        while (batch.length < this.options.inspection.maxBatch && this.queue.length > 0) {
          const p = this.queue.shift()!;
          if (!p.settled) batch.push(p);
        }
        this.metrics.queueDepth.set(this.queue.length);
        if (batch.length === 0) break;
        this.inFlight = batch;
        this.runStartedAt = performance.now();
        await this.score(batch);
        this.runStartedAt = null;
        this.inFlight = [];
      }
    } finally {
      this.running = false;
      this.applyModelSwap();
      this.idle?.();
    }
  }

  private applyModelSwap(): void {
    if (!this.nextModel) return;
    const { detector, done } = this.nextModel;
    this.nextModel = null;
    const old = this.model;
    this.model = detector;
    // A threshold set at run time is in raw units of the old model: it does not carry over.
    this.thresholdOverride = null;
    done(old);
  }

  private async score(batch: Part[]): Promise<void> {
    const model = this.model;
    const manifest = model.bundle.manifest;
    const { width, height } = manifest.input;
    const started = performance.now();
    let result;
    try {
      const images = new Uint8Array(batch.length * width * height * 3);
      batch.forEach((p, i) => {
        const c = p.frame!.colour;
        if (c.width !== width || c.height !== height || c.format !== 'RGB') {
          throw new InspectionError(`frame is ${c.format} ${c.width}×${c.height}, the model takes RGB ${width}×${height}`);
        }
        images.set(c.data, i * width * height * 3);
      });
      const depth = manifest.model.depthChannels > 0 ? depthInputsFor(manifest, batch.map((p) => this.rawDepth(p))) : undefined;
      const needsImages = manifest.model.featureChannels > 0;
      result = await model.inspect(needsImages ? { dtype: 'uint8', dims: [batch.length, height, width, 3], data: images } : null, depth);
    } catch (e) {
      const reason = `model error: ${(e as Error).message}`;
      this.logger.error({ err: e, batch: batch.length }, 'detector run failed; the parts are failed safe');
      await Promise.all(batch.map((p) => this.fail(p, reason)));
      return;
    }
    this.metrics.detectorSeconds.observe((performance.now() - started) / 1000);
    this.metrics.batchSize.observe(batch.length);
    const [, h, w] = model.featureShape;
    const calibration = calibrationOf(model);
    await Promise.all(
      batch.map(async (p, i) => {
        const raw = manifest.model.scoring.aggregation === 'mean' ? result.scoreMean[i]! : result.scoreMax[i]!;
        const j = judge(raw, calibration, this.threshold);
        const outcome: Omit<InspectionOutcome, 'record'> = {
          map: { data: result.map.subarray(i * h * w, (i + 1) * h * w), width: w, height: h },
          frame: { data: p.frame!.colour.data, width, height },
        };
        await this.settle(p, {
          score: Number.isFinite(raw) ? raw : null,
          normalizedScore: Number.isFinite(j.normalized) ? j.normalized : null,
          threshold: j.threshold,
          verdict: j.verdict,
          ...(Number.isFinite(raw) ? {} : { reason: 'the model returned a non-finite score' }),
        }, outcome);
      }),
    );
  }

  private rawDepth(p: Part): RawDepthFrame {
    const d = p.frame!.depth;
    if (!d) throw new InspectionError(`model ${this.model.bundle.manifest.id} runs in ${this.model.bundle.manifest.model.mode} mode but no depth frame came with the colour frame`);
    if (d.format !== 'GRAY16_LE') throw new InspectionError(`depth frame is ${d.format}, expected GRAY16_LE`);
    const units = new Uint16Array(d.data.buffer, d.data.byteOffset, d.width * d.height);
    const scale = this.options.metresPerUnit ?? 0.001;
    const z = new Float32Array(units.length);
    for (let i = 0; i < units.length; i++) z[i] = units[i]! * scale;
    return { z, width: d.width, height: d.height };
  }

  /** `fail` from a timer or callback: nothing may escape as an unhandled rejection. */
  private failSoon(part: Part, reason: string): void {
    this.fail(part, reason).catch((e: Error) => this.logger.error({ err: e, partId: part.partId }, 'could not fail a part safe'));
  }

  private fail(part: Part, reason: string): Promise<void> {
    return this.settle(part, { score: null, normalizedScore: null, threshold: this.threshold, verdict: 'error', reason }, {});
  }

  /**
   * A sequence number even when the state folder cannot be written: the part's verdict matters more than
   * the number. Continuing past the reserved block risks a number repeating after a crash, so the fault is
   * reported (health goes down and systemd restarts the agent).
   */
  private async nextSeq(): Promise<number> {
    try {
      return await this.sequence.take();
    } catch (e) {
      this.sequenceFault = e as Error;
      this.logger.error({ err: e }, 'cannot reserve sequence numbers in the state folder; numbering from memory');
      return this.sequence.takeUnreserved();
    }
  }

  /** Set when sequence numbers could not be reserved on disk (health reports it). */
  sequenceFault: Error | null = null;

  /** Gives a part its one and only verdict; a second one (a late score after a deadline) is only counted. */
  private async settle(
    part: Part,
    verdict: Pick<InspectionRecord, 'score' | 'normalizedScore' | 'threshold' | 'verdict'> & { reason?: string },
    extra: Omit<InspectionOutcome, 'record'>,
  ): Promise<void> {
    if (part.settled) {
      if (verdict.verdict !== 'error') this.metrics.lateResults.inc();
      return;
    }
    part.settled = true;
    if (part.timer) clearTimeout(part.timer);
    const seq = await this.nextSeq();
    // A score that arrives after the deadline (its timer could not fire first) still fails the part.
    const late = verdict.verdict !== 'error' && performance.now() > part.startedAt + this.options.inspection.deadlineMs;
    if (late) {
      this.metrics.lateResults.inc();
      verdict = { score: null, normalizedScore: null, threshold: verdict.threshold, verdict: 'error', reason: `deadline of ${this.options.inspection.deadlineMs} ms missed` };
      extra = {};
    }
    const latencyMs = Math.max(0, performance.now() - part.startedAt);
    const manifest = this.model.bundle.manifest;
    const record: InspectionRecord = {
      seq,
      station: this.options.station,
      partId: part.partId,
      capturedAt: new Date(part.capturedAtWall).toISOString(),
      ...verdict,
      latencyMs: Math.round(latencyMs * 1000) / 1000,
      model: { id: manifest.id, version: manifest.version },
    };
    this.metrics.countVerdict(record.verdict);
    this.metrics.latency.observe(latencyMs / 1000);
    if (record.verdict === 'error') this.logger.warn({ seq: record.seq, partId: record.partId, reason: record.reason }, 'part failed safe (reject)');
    const outcome = { record, ...extra };
    for (const sink of this.sinks) if (sink.carriesRejects) this.handTo(sink, outcome);
    for (const sink of this.sinks) if (!sink.carriesRejects) this.handTo(sink, outcome);
  }

  private handTo(sink: ResultSink, outcome: InspectionOutcome): void {
    try {
      sink.publish(outcome);
    } catch (e) {
      // A sink must not throw; if one does, the others still get the result.
      this.metrics.publishFailures.inc({ sink: sink.name });
      this.logger.error({ err: e, sink: sink.name, seq: outcome.record.seq }, 'result sink threw');
    }
  }

  /** Installs a loaded detector between two runs; resolves with the previous one (the caller releases it). */
  swapModel(detector: FrameScorer): Promise<FrameScorer> {
    calibrationOf(detector);
    if (this.nextModel) return Promise.reject(new InspectionError('another model swap is pending'));
    if (!this.accepting) return Promise.reject(new InspectionError('the inspection loop is stopping'));
    return new Promise((resolve) => {
      this.nextModel = { detector, done: resolve };
      if (!this.running) this.applyModelSwap();
    });
  }

  /**
   * Stops taking frames, lets waiting parts finish within `boundMs`, and fails the rest safe. Resolves when
   * every part taken has its verdict handed to the sinks.
   */
  async stop(boundMs: number): Promise<FrameScorer | null> {
    this.accepting = false;
    for (const t of this.triggers.splice(0)) {
      clearTimeout(t.timer);
      await this.fail({ frame: null, partId: t.partId, triggered: true, startedAt: t.at, capturedAtWall: t.atWall, settled: false, timer: null }, 'agent shutting down before a frame was captured');
    }
    if (this.running || this.queue.length > 0) {
      const drained = new Promise<void>((resolve) => { this.idle = resolve; });
      await Promise.race([drained, new Promise((r) => setTimeout(r, boundMs))]);
    }
    for (const p of [...this.inFlight, ...this.queue.splice(0)]) await this.fail(p, 'agent shut down before the part was scored');
    this.metrics.queueDepth.set(0);
    // A swap that never happened: its detector goes back to the caller to release.
    const pending = this.nextModel;
    this.nextModel = null;
    pending?.done(pending.detector);
    return pending?.detector ?? null;
  }
}

function calibrationOf(detector: FrameScorer) {
  const c = detector.bundle.manifest.calibration;
  if (!c) {
    throw new InspectionError(
      `bundle ${detector.bundle.manifest.id} has no calibration (no decision threshold): train it with \`ast-agent train\`, which calibrates on held-out good parts`,
    );
  }
  return c;
}
