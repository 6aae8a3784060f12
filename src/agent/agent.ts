/**
 * The daemon: wires camera → inspection loop → result sinks, and serves health and metrics. Each part
 * has start/stop and knows nothing of the others; this file is the only place that knows them all.
 *
 * Start order is chosen so that nothing half-configured ever inspects: state folder, model (loaded,
 * calibrated, warmed up), sinks, then the camera last; stop runs in reverse, within a bound, with parts
 * still in flight finished or failed safe.
 */
import type { Logger } from 'pino';
import { readBundle } from '../bundle/bundle-store.js';
import { openSource, type FrameSource, type SourceStatus } from '../camera/index.js';
import { runtimeOptionsOf, type AgentConfig } from '../config/agent-schema.js';
import type { ResultSink } from '../publish/result-sink.js';
import { LogResultSink } from '../publish/log-result-sink.js';
import { stationMisfit } from './station-fit.js';
import { DetectorThread, type FrameScorer } from '../runtime/detector-thread.js';
import { AgentMetrics } from './agent-metrics.js';
import { HealthServer, type HealthReport } from './health-server.js';
import { InspectionLoop } from './inspection-loop.js';
import { RuntimeSettingsStore } from './runtime-settings.js';
import { SequenceStore } from './sequence-store.js';
import { ModelUpdater, type SwapTarget } from './model-updater.js';
import type { BundleManifest } from '../config/bundle-manifest.js';

export class AgentStartError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AgentStartError';
  }
}

/** What sink factories get: the loop and metrics now, the agent itself once it has started. */
export interface SinkContext {
  loop: InspectionLoop;
  metrics: AgentMetrics;
  detector: FrameScorer;
  agent: () => Agent | null;
  updater: ModelUpdater;
  /** Called after every model swap (update, rollback, reload). */
  onModelChanged: (listener: (model: BundleManifest, provider: string) => void) => void;
}

export interface AgentOptions {
  version: string;
  logger: Logger;
  /** Sinks besides the log (MQTT, Sparkplug, the demo's console view); the agent starts and stops them. */
  sinks?: (ctx: SinkContext) => ResultSink[] | Promise<ResultSink[]>;
  /** Process metrics (CPU, memory, event loop) on /metrics; off in tests that run several agents. */
  processMetrics?: boolean;
  /** Leave the camera off until `startSource()` (the demo subscribes to results first). */
  deferSource?: boolean;
}

/** Loads, checks and warms up a bundle's fused detector for this station. */
export async function loadDetector(config: AgentConfig, bundlePath: string, logger: Logger): Promise<FrameScorer> {
  let bundle;
  try {
    bundle = await readBundle(bundlePath);
  } catch (e) {
    throw new AgentStartError(`model.bundle: ${(e as Error).message}`, { cause: e });
  }
  const misfit = stationMisfit(config, bundle.manifest);
  if (misfit) throw new AgentStartError(`${misfit.key}: ${misfit.message}`);
  return DetectorThread.load(bundle.dir, runtimeOptionsOf(config.model), logger.child({ part: 'detector' }));
}

export class Agent implements SwapTarget {
  private readonly startedAt = Date.now();
  private readonly streams = new Map<string, SourceStatus>();
  private lastInspectionAt: number | null = null;
  private stopping: Promise<void> | null = null;

  private constructor(
    readonly config: AgentConfig,
    readonly metrics: AgentMetrics,
    readonly loop: InspectionLoop,
    readonly settings: RuntimeSettingsStore,
    readonly updater: ModelUpdater,
    private readonly modelListeners: ((model: BundleManifest, provider: string) => void)[],
    private readonly sinks: ResultSink[],
    private readonly source: FrameSource,
    private readonly http: HealthServer | null,
    private readonly logger: Logger,
  ) {}

  static async start(config: AgentConfig, options: AgentOptions): Promise<Agent> {
    const logger = options.logger.child({ station: config.station });
    const sequence = await SequenceStore.open(config.stateDir).catch((e: Error) => {
      throw new AgentStartError(`stateDir: ${config.stateDir} is not usable (${e.message})`, { cause: e });
    });
    const { store: settings, problem } = await RuntimeSettingsStore.open(config.stateDir);
    if (problem) logger.warn({ problem }, 'run-time settings ignored; the calibrated threshold applies');

    const updater = await ModelUpdater.open(config, logger.child({ part: 'updates' }));
    const startup = await updater.startupBundle().catch((e: Error) => {
      throw new AgentStartError(`model.bundle: ${e.message}`, { cause: e });
    });
    const detector = await loadDetector(config, startup.path, logger);
    // From here on a failure must not leave the detector thread or started sinks running (the process
    // would hang instead of exiting for systemd to restart it).
    const started: ResultSink[] = [];
    try {
      return await Agent.assemble(config, options, { logger, sequence, settings, updater, detector, adopt: startup.adopt, started });
    } catch (e) {
      for (const sink of started.reverse()) await sink.stop().catch(() => undefined);
      await detector.release().catch(() => undefined);
      throw e;
    }
  }

  private static async assemble(
    config: AgentConfig,
    options: AgentOptions,
    parts: {
      logger: Logger;
      sequence: SequenceStore;
      settings: RuntimeSettingsStore;
      updater: ModelUpdater;
      detector: FrameScorer;
      adopt: boolean;
      started: ResultSink[];
    },
  ): Promise<Agent> {
    const { logger, sequence, settings, updater, detector, started } = parts;
    if (parts.adopt) await updater.adoptConfigured();
    const metrics = new AgentMetrics(config.station, options.processMetrics ?? true);
    const m = detector.bundle.manifest;
    metrics.setModel(m.id, m.version, detector.provider);

    const sinks: ResultSink[] = [new LogResultSink(logger.child({ part: 'results' })), updater];
    const modelListeners: ((model: BundleManifest, provider: string) => void)[] = [];
    // The loop is created before the extra sinks (commands need it) and hands results to this same array.
    const loop = new InspectionLoop(
      detector,
      sinks,
      sequence,
      metrics,
      { station: config.station, inspection: config.inspection, ...(config.source.depth ? { metresPerUnit: config.source.depth.metresPerUnit } : {}) },
      logger.child({ part: 'inspection' }),
    );
    applyThresholdSetting(loop, settings, config, logger);
    let agent: Agent | null = null;
    sinks.push(
      ...((await options.sinks?.({ loop, metrics, detector, agent: () => agent, updater, onModelChanged: (l) => modelListeners.push(l) })) ?? []),
    );
    for (const sink of sinks) {
      await sink.start();
      started.push(sink);
    }

    const source = openSource(config.source, { width: m.input.width, height: m.input.height }, logger.child({ part: 'camera' }));
    const http = await HealthServer.start({ host: config.http.host, port: config.http.port, registry: metrics.registry, health: () => agent!.health() });
    agent = new Agent(config, metrics, loop, settings, updater, modelListeners, sinks, source, http, logger);
    const self = agent;
    source.onStatus((s) => {
      self.streams.set(s.stream, s);
      metrics.sourceUp.set({ stream: s.stream }, s.state === 'running' ? 1 : 0);
      if (s.state === 'reconnecting') metrics.sourceRestarts.inc({ stream: s.stream });
    });
    source.onFrame((frame) => {
      metrics.countFrame('colour');
      self.lastInspectionAt = performance.now();
      loop.offerFrame(frame);
    });
    source.onDrop((reason) => metrics.countDrop(reason));
    if (!options.deferSource) source.start();
    logger.info(
      { model: { id: m.id, version: m.version }, provider: detector.provider, source: config.source.kind, trigger: config.inspection.trigger.mode, http: http.port },
      'agent inspecting',
    );
    return agent;
  }

  get httpPort(): number | null {
    return this.http?.port ?? null;
  }

  /** ok: inspecting; degraded: running but a stream is reconnecting; down: no model or no frames for long. */
  health(): HealthReport {
    const problems: string[] = [];
    for (const s of this.streams.values()) {
      if (s.state !== 'running' && s.state !== 'ended') problems.push(`${s.stream} stream ${s.state}${s.reason ? `: ${s.reason}` : ''}`);
    }
    const stuckAfterMs = Math.max(10_000, 5 * this.config.inspection.deadlineMs);
    const crashed = this.loop.detector.failure;
    const wedged = this.loop.runningForMs > stuckAfterMs || crashed !== null || this.loop.sequenceFault !== null;
    if (this.loop.runningForMs > stuckAfterMs) problems.push(`detector run has not returned for ${Math.round(this.loop.runningForMs / 1000)} s`);
    if (crashed) problems.push(`detector: ${crashed.message}`);
    if (this.loop.sequenceFault) problems.push(`sequence numbers cannot be reserved in ${this.config.stateDir}: ${this.loop.sequenceFault.message}`);
    const m = this.loop.detector.bundle.manifest;
    const sinceFrame = this.lastInspectionAt === null ? null : (performance.now() - this.lastInspectionAt) / 1000;
    return {
      status: wedged ? 'down' : problems.length === 0 ? 'ok' : 'degraded',
      problems,
      station: this.config.station,
      uptimeS: Math.round((Date.now() - this.startedAt) / 1000),
      model: { id: m.id, version: m.version, provider: this.loop.detector.provider },
      streams: Object.fromEntries([...this.streams].map(([k, v]) => [k, v.state])),
      secondsSinceLastFrame: sinceFrame === null ? null : Math.round(sinceFrame * 10) / 10,
      queued: this.loop.queued,
      update: this.updater.state,
    };
  }

  /** Replaces the model between two inspections; the previous detector is released. */
  async swapDetector(next: FrameScorer): Promise<void> {
    const old = await this.loop.swapModel(next);
    const m = next.bundle.manifest;
    this.metrics.setModel(m.id, m.version, next.provider);
    applyThresholdSetting(this.loop, this.settings, this.config, this.logger);
    for (const l of this.modelListeners) l(m, next.provider);
    await old.release();
    this.logger.info({ model: { id: m.id, version: m.version }, provider: next.provider }, 'model swapped');
  }

  /** Starts the camera when the agent was started with `deferSource`. */
  startSource(): void {
    this.source.start();
  }

  /** Adds a sink after start (it is not started or stopped by the agent). */
  addSink(sink: ResultSink): void {
    this.sinks.push(sink);
  }

  currentModel(): BundleManifest {
    return this.loop.detector.bundle.manifest;
  }

  /** Loads the model again (the store's active version, else `model.bundle`) and swaps it in between two inspections. */
  async reloadModel(): Promise<{ id: string; version: string }> {
    return this.updater.exclusive(async () => {
      const startup = await this.updater.startupBundle();
      const next = await loadDetector(this.config, startup.path, this.logger);
      try {
        await this.swapDetector(next);
      } catch (e) {
        await next.release();
        throw e;
      }
      if (startup.adopt) await this.updater.adoptConfigured();
      return next.bundle.manifest;
    });
  }

  /** Camera off first (no new parts), parts in flight finished or failed safe, then sinks flushed. */
  stop(boundMs = 8000): Promise<void> {
    this.stopping ??= (async () => {
      const until = performance.now() + boundMs;
      const left = () => Math.max(0, until - performance.now());
      await this.source.stop();
      const neverSwapped = await this.loop.stop(left() * 0.6);
      await neverSwapped?.release().catch(() => undefined);
      for (const sink of [...this.sinks].reverse()) {
        await Promise.race([sink.stop(), new Promise((r) => setTimeout(r, left()))]).catch((e: Error) =>
          this.logger.error({ err: e, sink: sink.name }, 'sink did not stop cleanly'),
        );
      }
      await this.http?.close();
      await this.loop.detector.release();
      this.logger.info('agent stopped');
    })();
    return this.stopping;
  }
}

function applyThresholdSetting(loop: InspectionLoop, settings: RuntimeSettingsStore, config: AgentConfig, logger: Logger): void {
  const saved = settings.settings.threshold;
  const m = loop.detector.bundle.manifest;
  if (saved && 'normalized' in saved) loop.setThreshold({ normalized: saved.normalized });
  else if (saved && saved.modelId === m.id && saved.modelVersion === m.version) loop.setThreshold({ raw: saved.raw });
  else if (config.model.threshold !== undefined) loop.setThreshold({ normalized: config.model.threshold });
  if (saved && 'raw' in saved && saved.modelId !== m.id) logger.warn({ saved }, 'a raw threshold saved for another model is ignored');
}
