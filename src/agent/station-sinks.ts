/**
 * The result sinks and commands of one station, built from its config: MQTT (always; an in-process broker
 * when `mqtt.url` is not set), Sparkplug B when configured, frame capture for fine-tuning, and the demo's
 * console view. Commands act on the agent only through the narrow handle they are given.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { AgentConfig } from '../config/agent-schema.js';
import { BundleChunkSchema } from '../config/bundle-chunk-schema.js';
import {
  CaptureRequestSchema,
  ModelRollbackRequestSchema,
  ModelUpdateRequestSchema,
  ReloadRequestSchema,
  SetThresholdRequestSchema,
  TriggerPayloadSchema,
} from '../config/mqtt-payloads.js';
import type { UpdateProgress } from './model-updater.js';
import { ConsoleResultSink } from '../publish/log-result-sink.js';
import { MqttPublisher } from '../publish/mqtt-publisher.js';
import type { ResultSink } from '../publish/result-sink.js';
import { SparkplugNode } from '../publish/sparkplug/sparkplug-node.js';
import { normalizeScore } from '../model/verdict.js';
import type { Agent, SinkContext } from './agent.js';
import type { InspectionLoop } from './inspection-loop.js';
import { FrameCapture } from './frame-capture.js';

export interface StationSinkOptions {
  version: string;
  logger: Logger;
  /** One line per part on stdout (the demo). */
  console?: boolean;
}

/** The threshold in force as a normalised score (0.5 = the calibrated one). */
function normalizedThresholdOf(loop: InspectionLoop): number {
  const c = loop.detector.bundle.manifest.calibration!;
  return normalizeScore(loop.threshold, c);
}

export async function stationSinks(config: AgentConfig, ctx: SinkContext, options: StationSinkOptions): Promise<ResultSink[]> {
  const { logger } = options;
  const { loop, metrics } = ctx;
  const manifest = () => loop.detector.bundle.manifest;
  const sinks: ResultSink[] = [];
  if (options.console) sinks.push(new ConsoleResultSink());

  const capture = new FrameCapture(join(config.stateDir, 'captures'), logger.child({ part: 'capture' }));
  sinks.push(capture);

  const mqtt = await MqttPublisher.create({
    config,
    identity: { agentVersion: options.version, model: { id: manifest().id, version: manifest().version }, provider: loop.detector.provider },
    logger,
    outbox: {
      maxBytes: config.mqtt.outbox.maxMiB * 1024 * 1024,
      maxAgeMs: config.mqtt.outbox.maxAgeHours * 3600 * 1000,
      inlineWriteBudgetMs: config.mqtt.outbox.inlineWriteBudgetMs,
    },
    ...(config.mqtt.heatmap ? { heatmap: config.mqtt.heatmap } : {}),
    ...(config.mqtt.metricsIntervalS > 0 ? { metrics: { intervalMs: config.mqtt.metricsIntervalS * 1000, snapshot: () => ({ ...metrics.tally, queued: loop.queued }) } } : {}),
    status: () => ({ health: ctx.agent()?.health() ?? null, capture: capture.status }),
    onPublishFailure: () => metrics.publishFailures.inc({ sink: 'mqtt' }),
  });
  sinks.push(mqtt);
  metrics.observeOutbox(() => mqtt.outboxStats());

  /** Commands act on the started agent; one that arrives during start-up is answered with an error. */
  const runningAgent = (): Agent => {
    const agent = ctx.agent();
    if (!agent) throw new Error('the agent is still starting');
    return agent;
  };

  let sparkplug: SparkplugNode | null = null;
  const setThreshold = async (value: { normalized: number } | { raw: number }) => {
    const agent = runningAgent();
    const m = manifest();
    // Saved before it applies: a threshold that could not be saved would silently revert at the next start.
    await agent.settings.update({ threshold: 'raw' in value ? { raw: value.raw, modelId: m.id, modelVersion: m.version } : { normalized: value.normalized } });
    const raw = loop.setThreshold(value);
    logger.info({ threshold: raw, setting: value }, 'threshold changed by command');
    const normalized = normalizedThresholdOf(loop);
    sparkplug?.setThreshold(normalized);
    return { threshold: raw, normalized };
  };

  mqtt.commands.register('set-threshold', {
    schema: SetThresholdRequestSchema,
    handler: (args) => setThreshold(args.normalized !== undefined ? { normalized: args.normalized } : { raw: args.raw! }),
  });
  mqtt.commands.register('capture', {
    schema: CaptureRequestSchema,
    handler: async (args) => capture.arm({ count: args.count, onlyPass: args.onlyPass, ...(args.label ? { label: args.label } : {}) }),
  });
  mqtt.commands.register('reload', {
    schema: ReloadRequestSchema,
    timeoutMs: 120_000,
    handler: async () => {
      const m = await runningAgent().reloadModel();
      return { model: { id: m.id, version: m.version } };
    },
  });

  // Model updates: progress goes to the command's response topic (final: false) before the final answer.
  const progressTo = (transaction: string | number | undefined) => (p: UpdateProgress) => {
    logger.info({ update: p }, `model update: ${p.step}`);
    const payload = JSON.stringify({ ok: true, ...(transaction !== undefined ? { transaction } : {}), final: false, ...p });
    mqtt.connection.publish(mqtt.connection.topics.commandResponse('model-update'), payload, { qos: 1 }).catch(() => undefined);
  };
  mqtt.commands.register('model-update', {
    schema: ModelUpdateRequestSchema,
    timeoutMs: (config.updates.downloadTimeoutS + 600) * 1000,
    handler: async (args, context) => {
      const v = await ctx.updater.installFromUrl(runningAgent(), args.url, args.sha256, progressTo(context.transaction));
      return { step: 'activated', model: { id: v.id, version: v.version }, version: v.name };
    },
  });
  mqtt.commands.register('model-chunk', {
    schema: BundleChunkSchema,
    // A chunk carries up to 1 MiB of data as base64 (4/3 larger) plus its envelope.
    maxPayloadBytes: 1_500_000,
    handler: async (chunk) => {
      const outcome = await ctx.updater.acceptChunk(runningAgent(), chunk, (p, transferId) => progressTo(transferId)(p));
      return outcome.status === 'complete'
        ? { status: 'complete', transferId: outcome.transferId, bytes: outcome.bytes, sha256: outcome.sha256, next: 'installing: progress on cmd/model-update/response' }
        : { status: outcome.status, transferId: outcome.transferId, received: outcome.received, count: outcome.count };
    },
  });
  mqtt.commands.register('model-rollback', {
    schema: ModelRollbackRequestSchema,
    timeoutMs: 120_000,
    handler: async () => {
      const v = await ctx.updater.rollback(runningAgent(), 'rollback command');
      return { step: 'rolled-back', model: { id: v.id, version: v.version }, version: v.name };
    },
  });
  ctx.onModelChanged((m, provider) => mqtt.connection.updateIdentity({ model: { id: m.id, version: m.version }, provider }));

  if (config.inspection.trigger.mode === 'external') {
    mqtt.connection.subscribe(mqtt.connection.topics.trigger, (_topic, payload) => {
      let parsed;
      try {
        parsed = TriggerPayloadSchema.safeParse(JSON.parse(payload.toString('utf8')));
      } catch {
        logger.warn({ topic: mqtt.connection.topics.trigger }, 'trigger payload is not JSON; ignored');
        return;
      }
      if (!parsed.success) {
        logger.warn({ problems: parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`) }, 'trigger payload refused');
        return;
      }
      loop.trigger(parsed.data.partId);
    }, { qos: 1, noRetained: true });
  }

  const spb = config.mqtt.sparkplug;
  if (spb) {
    sparkplug = new SparkplugNode({
      url: mqtt.embedded?.url ?? config.mqtt.url!,
      mqtt: { ...mqtt.connection.sessionOptions, ...(spb.clientId ? { clientId: spb.clientId } : {}) },
      groupId: spb.groupId,
      edgeNodeId: spb.edgeNodeId ?? config.station,
      deviceId: spb.deviceId,
      stateFile: join(config.stateDir, 'sparkplug.json'),
      ...(spb.primaryHostId ? { primaryHostId: spb.primaryHostId } : {}),
      softwareVersion: options.version,
      model: { id: manifest().id, version: manifest().version },
      threshold: normalizedThresholdOf(loop),
      storeWhileOffline: spb.storeWhileOffline,
      ...(spb.allowThresholdWrites
        ? {
            onThresholdWrite: async (v: number) => {
              await setThreshold({ normalized: v });
              return true;
            },
          }
        : {}),
      logger: logger.child({ part: 'sparkplug' }),
      reconnectMs: spb.reconnectMs,
    });
    sinks.push(sparkplug);
    const node = sparkplug;
    metrics.observeSparkplug(() => node.forwarding);
  }
  return sinks;
}
