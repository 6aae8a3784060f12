/**
 * Remote model updates on a running agent: a bundle arrives (URL or MQTT chunks), is staged in the model
 * store and verified (sha256 of every file, Ed25519 signature by a trusted key), checked against this
 * station (mode, input size), loaded on its own detector thread, self-tested on its golden samples, and
 * only then committed, activated and swapped in between two inspections. The previous version stays in the
 * store; the first inspections of the new one are watched and a model that fails or scores far from its
 * calibration is rolled back automatically. Every store transition is atomic, so a power cut at any step
 * leaves the device on a complete, verified model (the store repairs itself at open).
 */
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { goldenSamplesFor, compareGoldenScores } from '../bundle/golden.js';
import { stationMisfit } from './station-fit.js';
import { readBundle, sha256 } from '../bundle/bundle-store.js';
import { ChunkAssembler, type ChunkOutcome } from '../bundle/delivery/chunk-assembler.js';
import { downloadBundle } from '../bundle/delivery/download.js';
import { ModelStore, type StagedBundle, type StoredVersion } from '../bundle/model-store.js';
import { runtimeOptionsOf, type AgentConfig } from '../config/agent-schema.js';
import type { BundleManifest } from '../config/bundle-manifest.js';
import type { InspectionOutcome, ResultSink } from '../publish/result-sink.js';
import { DetectorThread, type FrameScorer } from '../runtime/detector-thread.js';

export type UpdateStep = 'receiving' | 'staging' | 'checking' | 'loading' | 'self-test' | 'activating' | 'probation' | 'done' | 'rolled-back' | 'failed';

export interface UpdateProgress {
  step: UpdateStep;
  detail?: string;
  model?: { id: string; version: string };
}

export class UpdateError extends Error {
  constructor(
    readonly step: UpdateStep,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'UpdateError';
  }
}

/** What the updater needs of the running agent. */
export interface SwapTarget {
  readonly config: AgentConfig;
  currentModel(): BundleManifest;
  swapDetector(next: FrameScorer): Promise<void>;
}

export interface UpdateStatus {
  state: 'idle' | UpdateStep;
  active: string | null;
  previous: string | null;
  last?: { outcome: 'installed' | 'refused' | 'rolled-back'; model?: string; reason?: string; at: string };
  transfers: { transferId: string; received: number; count: number }[];
}

export class ModelUpdater implements ResultSink {
  readonly name = 'model-probation';
  private busy = false;
  private status: UpdateStatus;
  /** Inspections by the model on probation: the agent watches them and rolls back a bad model. */
  private probation: { model: string; seen: number; errors: number; scores: number[]; manifest: BundleManifest } | null = null;
  /** The agent the model on probation runs in (to roll back). */
  private probationAgent: SwapTarget | null = null;

  private constructor(
    readonly store: ModelStore,
    private readonly chunks: ChunkAssembler,
    private readonly config: AgentConfig,
    private readonly logger: Logger,
  ) {
    const p = store.pointers();
    this.status = { state: 'idle', active: p.active, previous: p.previous, transfers: [] };
  }

  static async open(config: AgentConfig, logger: Logger): Promise<ModelUpdater> {
    const u = config.updates;
    if (u.allowUnsigned) {
      logger.warn('updates.allowUnsigned is true: UNSIGNED MODELS WILL BE INSTALLED. Development only; never on a production line.');
    } else if (u.trustedKeys.length === 0) {
      logger.warn('updates.trustedKeys is empty: every remote model update will be refused until a public key is configured');
    }
    const store = await ModelStore.open(join(config.stateDir, 'models'), {
      keep: u.keepVersions,
      logger: logger.child({ part: 'model-store' }),
      ...(u.allowUnsigned ? {} : { trustedKeys: u.trustedKeys }),
    });
    if (store.repairReport.outcome !== 'ok' && store.repairReport.outcome !== 'nothing-active') {
      logger.warn({ repair: store.repairReport }, 'model store repaired at start');
    }
    const chunks = await ChunkAssembler.open({
      dir: join(config.stateDir, 'models', 'incoming'),
      maxBytes: u.maxBundleMiB * 1024 * 1024,
      idleTimeoutMs: u.transferTimeoutS * 1000,
      logger: logger.child({ part: 'model-chunks' }),
      onExpired: (t) => logger.warn(t, 'model transfer abandoned: no chunk within updates.transferTimeoutS; its data was deleted'),
    });
    return new ModelUpdater(store, chunks, config, logger);
  }

  /**
   * The bundle to start with. Normally the store's active version (it may be newer than the config, from a
   * remote update). A configured `model.bundle` the store has never seen is the operator's explicit choice:
   * it runs, and is imported into the store once it has loaded (`adoptConfigured`), so a bad one never
   * becomes the stored active version and an update always has a version to roll back to.
   */
  async startupBundle(): Promise<{ path: string; adopt: boolean }> {
    const active = await this.store.active();
    let configured;
    try {
      configured = await readBundle(this.config.model.bundle);
    } catch (e) {
      if (!active) throw e;
      this.logger.warn({ err: e, active: active.name }, 'model.bundle cannot be read; running the model store\'s active version');
      return { path: active.dir, adopt: false };
    }
    const sha = sha256(await readFile(join(configured.dir, 'manifest.json')));
    const known = (await this.store.list()).some((v) => v.manifestSha256 === sha);
    if (active && known) return { path: active.dir, adopt: false };
    return { path: configured.dir, adopt: true };
  }

  /** Imports the configured bundle (already loaded and running) into the store as the active version. */
  async adoptConfigured(): Promise<void> {
    const staged = await this.store.stage(this.config.model.bundle, { trustedLocally: true });
    const stored = await this.store.commit(staged);
    await this.store.activate(stored.name);
    await this.store.prune().catch(() => []);
    this.logger.info({ version: stored.name, from: this.config.model.bundle }, 'configured model imported into the model store');
  }

  get state(): UpdateStatus {
    const p = this.store.pointers();
    return { ...this.status, active: p.active, previous: p.previous, transfers: this.chunks.inProgress() };
  }

  private set(step: UpdateStep | 'idle'): void {
    this.status.state = step;
  }

  /** Downloads a bundle .tar and installs it. */
  async installFromUrl(agent: SwapTarget, url: string, sha256: string | undefined, progress: (p: UpdateProgress) => void): Promise<StoredVersion> {
    return this.exclusive(async () => {
      progress({ step: 'receiving', detail: `downloading ${url}` });
      const downloads = join(this.config.stateDir, 'models', 'downloads');
      await mkdir(downloads, { recursive: true });
      const file = join(downloads, 'bundle.tar');
      const { caFile } = this.config.updates;
      let ca: Buffer | undefined;
      try {
        if (caFile) ca = await readFile(caFile);
      } catch (e) {
        throw new UpdateError('receiving', `updates.caFile: cannot read ${caFile} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { cause: e });
      }
      let got;
      try {
        got = await downloadBundle(url, file, {
          maxBytes: this.config.updates.maxBundleMiB * 1024 * 1024,
          idleTimeoutMs: this.config.updates.downloadTimeoutS * 1000,
          ...(sha256 ? { expectedSha256: sha256 } : {}),
          ...(ca ? { ca } : {}),
          logger: this.logger.child({ part: 'download' }),
        });
      } catch (e) {
        throw new UpdateError('receiving', (e as Error).message, { cause: e });
      }
      try {
        return await this.install(agent, got.file, progress);
      } finally {
        await rm(got.file, { force: true });
      }
    });
  }

  /** One chunk of a bundle sent over MQTT; the last one starts the install (in the background). */
  async acceptChunk(agent: SwapTarget, message: unknown, progress: (p: UpdateProgress, transferId: string) => void): Promise<ChunkOutcome> {
    const outcome = await this.chunks.accept(message);
    if (outcome.status === 'complete') {
      const { file, transferId } = outcome;
      void this.exclusive(() => this.install(agent, file, (p) => progress(p, transferId)))
        .catch((e: Error) => progress({ step: 'failed', detail: e.message }, transferId))
        .finally(() => rm(file, { force: true }));
    }
    return outcome;
  }

  /** Runs one model change at a time (install, rollback, reload); a second one is refused, not queued. */
  async exclusive<T>(work: () => Promise<T>): Promise<T> {
    if (this.busy) throw new UpdateError('receiving', 'another model update is in progress');
    this.busy = true;
    try {
      return await work();
    } catch (e) {
      this.status.last = { outcome: 'refused', reason: (e as Error).message, at: new Date().toISOString() };
      this.logger.error({ err: e, step: (e as UpdateError).step }, 'model update refused; the current model keeps inspecting');
      throw e;
    } finally {
      this.busy = false;
      if (this.status.state !== 'probation') this.set('idle');
    }
  }

  /** Staging → checks → load → self-test → commit → activate → swap → probation. */
  private async install(agent: SwapTarget, file: string, progress: (p: UpdateProgress) => void): Promise<StoredVersion> {
    const step = (s: UpdateStep, detail?: string, model?: { id: string; version: string }) => {
      this.set(s);
      progress({ step: s, ...(detail ? { detail } : {}), ...(model ? { model } : {}) });
    };
    step('staging', 'verifying files and signature');
    let staged: StagedBundle;
    try {
      staged = await this.store.stage(file);
    } catch (e) {
      throw new UpdateError('staging', (e as Error).message, { cause: e });
    }
    const model = { id: staged.manifest.id, version: staged.manifest.version };
    if (!staged.signedBy) this.logger.warn({ model }, 'installing an UNSIGNED model (updates.allowUnsigned)');
    let detector: FrameScorer | null = null;
    try {
      step('checking', `signed by ${staged.signedBy ?? 'nobody (unsigned allowed)'}`, model);
      const problem = stationMisfit(this.config, staged.manifest, agent.currentModel())?.message;
      if (problem) throw new UpdateError('checking', problem);

      step('loading', 'building the session and warming up', model);
      detector = await DetectorThread.load(staged.dir, runtimeOptionsOf(this.config.model)).catch((e: Error) => {
        throw new UpdateError('loading', e.message, { cause: e });
      });

      step('self-test', 'scoring the bundle\'s golden samples', model);
      const golden = await goldenSamplesFor(await readBundle(staged.dir));
      if (!golden && staged.manifest.model.depthChannels === 0) {
        throw new UpdateError('self-test', `model ${model.id} ${model.version} has no golden samples to self-test with (train or assemble it with this version)`);
      }
      if (golden) {
        const r = await detector.inspect(golden.images, golden.depth);
        const scores = staged.manifest.model.scoring.aggregation === 'mean' ? r.scoreMean : r.scoreMax;
        const cmp = compareGoldenScores(scores, golden);
        if (!cmp.ok) {
          const m0 = cmp.mismatches[0]!;
          throw new UpdateError('self-test', `golden sample ${m0.index} scored ${m0.actual}, expected ${m0.expected} (error ${m0.error.toExponential(2)} > tolerance ${golden.tolerance})`);
        }
      } else {
        // Depth bundles built before depth inputs were stored as golden samples: probation only.
        this.logger.warn({ model }, 'depth model without golden samples (built by an older version): self-test skipped, probation only');
      }
    } catch (e) {
      await detector?.release();
      await this.store.discard(staged);
      throw e;
    }

    step('activating', 'committing to the store and swapping between two inspections', model);
    let stored: StoredVersion;
    try {
      stored = await this.store.commit(staged);
      // Swap first, then move the pointer: a failed swap leaves the store describing what runs.
      await agent.swapDetector(detector);
    } catch (e) {
      await detector.release();
      await this.store.discard(staged).catch(() => undefined);
      throw new UpdateError('activating', (e as Error).message, { cause: e });
    }
    await this.store.activate(stored.name);
    const removed = await this.store.prune().catch((e: Error) => {
      this.logger.warn({ err: e }, 'pruning old model versions failed');
      return [];
    });
    this.probation = this.config.updates.probation.inspections > 0 ? { model: stored.name, seen: 0, errors: 0, scores: [], manifest: stored.manifest } : null;
    this.status.last = { outcome: 'installed', model: stored.name, at: new Date().toISOString() };
    step(this.probation ? 'probation' : 'done', `active: ${stored.name}${removed.length ? `; pruned ${removed.join(', ')}` : ''}`, model);
    this.probationAgent = agent;
    return stored;
  }

  /** Rolls back to the previous version (command, or automatic after a failed probation). */
  async rollback(agent: SwapTarget, reason: string): Promise<StoredVersion> {
    if (this.busy) throw new UpdateError('rolled-back', 'a model update is in progress; roll back after it');
    this.busy = true;
    try {
      const previous = await this.store.previous();
      if (!previous) throw new UpdateError('rolled-back', 'no previous model version to roll back to');
      const detector = await DetectorThread.load(previous.dir, runtimeOptionsOf(this.config.model));
      const from = this.store.pointers().active;
      try {
        await agent.swapDetector(detector);
      } catch (e) {
        await detector.release();
        throw e;
      }
      const v = await this.store.rollback();
      this.probation = null;
      this.status.last = { outcome: 'rolled-back', model: from ?? undefined, reason, at: new Date().toISOString() };
      this.logger.warn({ from, to: v.name, reason }, 'model rolled back');
      return v;
    } finally {
      this.busy = false;
      this.set('idle');
    }
  }

  // ---- ResultSink: watches the first inspections of a new model --------------------------------------

  async start(): Promise<void> {}

  publish({ record }: InspectionOutcome): void {
    const p = this.probation;
    if (!p || record.model.id !== p.manifest.id || record.model.version !== p.manifest.version) return;
    p.seen++;
    if (record.verdict === 'error') p.errors++;
    else if (record.score !== null) p.scores.push(record.score);
    const { inspections, maxErrorRate, maxScoreShift } = this.config.updates.probation;
    if (p.seen < inspections) return;
    this.probation = null;
    if (this.status.state === 'probation') this.set('idle');
    const verdict = probationVerdict(p, { maxErrorRate, maxScoreShift });
    if (verdict === null) {
      this.logger.info({ model: p.model, inspections: p.seen }, 'new model passed probation');
      this.status.last = { outcome: 'installed', model: p.model, at: new Date().toISOString() };
      return;
    }
    const agent = this.probationAgent;
    if (!agent) return;
    this.logger.error({ model: p.model, reason: verdict }, 'new model failed probation: rolling back');
    this.rollbackWhenFree(agent, `probation failed: ${verdict}`);
  }

  /** An automatic rollback waits for a model change in progress (a reload) instead of being dropped. */
  private rollbackWhenFree(agent: SwapTarget, reason: string, attempt = 0): void {
    if (this.busy && attempt < 60) {
      setTimeout(() => this.rollbackWhenFree(agent, reason, attempt + 1), 2000).unref();
      return;
    }
    this.rollback(agent, reason).catch((e: Error) => this.logger.error({ err: e }, 'automatic rollback failed'));
  }

  async stop(): Promise<void> {
    await this.chunks.close();
  }
}

/** Null when the watched inspections look like the calibration promised; else why not. */
export function probationVerdict(
  p: { seen: number; errors: number; scores: number[]; manifest: BundleManifest },
  limits: { maxErrorRate: number; maxScoreShift: number },
): string | null {
  const errorRate = p.errors / Math.max(1, p.seen);
  if (errorRate > limits.maxErrorRate) return `${p.errors} of ${p.seen} inspections failed (limit ${Math.round(limits.maxErrorRate * 100)} %)`;
  const c = p.manifest.calibration;
  if (!c || p.scores.length === 0) return null;
  const sorted = [...p.scores].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)]!;
  const shift = Math.abs(median - c.goodMean) / c.goodStd;
  if (shift > limits.maxScoreShift) {
    return `median score ${median.toPrecision(4)} is ${shift.toFixed(1)} good-score deviations from the calibrated good mean ${c.goodMean.toPrecision(4)} (limit ${limits.maxScoreShift})`;
  }
  return null;
}
