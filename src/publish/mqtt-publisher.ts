/**
 * Everything MQTT as one result sink the agent starts and stops: the embedded broker when `mqtt.url` is not
 * set, the broker connection, the durable outbox (`<stateDir>/outbox/mqtt`), the result sink and the command
 * server. Commands are registered on `commands` between `create()` and `start()`.
 *
 * Stop order: results flushed (bounded), commands stopped, retained `offline` published and a clean
 * disconnect, outbox closed, embedded broker last.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { AgentConfig } from '../config/agent-schema.js';
import { CommandServer } from './command-server.js';
import { EmbeddedBroker } from './embedded-broker.js';
import { MqttConnection, type AgentIdentity } from './mqtt-connection.js';
import { MqttResultSink, type HeatmapOptions, type MetricsOptions } from './mqtt-result-sink.js';
import { Outbox } from './outbox.js';
import type { InspectionOutcome, ResultSink } from './result-sink.js';

export interface MqttPublisherOptions {
  config: AgentConfig;
  identity: AgentIdentity;
  logger: Logger;
  /** Journal bounds (defaults: 512 MiB, 7 days). */
  outbox?: { maxBytes?: number; maxAgeMs?: number; inlineWriteBudgetMs?: number };
  heatmap?: HeatmapOptions;
  metrics?: MetricsOptions;
  /** Added to the `status` command's answer. */
  status?: () => Record<string, unknown>;
  /** Bound on stop(), ms (default 5000). */
  stopTimeoutMs?: number;
  onPublishFailure?: (kind: string) => void;
}

export class MqttPublisher implements ResultSink {
  readonly name = 'mqtt';
  readonly carriesRejects = true;
  private outbox: Outbox | null = null;
  private sink: MqttResultSink | null = null;
  private stopping: Promise<void> | null = null;

  private constructor(
    private readonly options: MqttPublisherOptions,
    readonly connection: MqttConnection,
    readonly commands: CommandServer,
    /** The in-process broker, when `mqtt.url` is not set. */
    readonly embedded: EmbeddedBroker | null,
  ) {}

  /**
   * Checks the MQTT settings (TLS files...) and starts the embedded broker when there is no `mqtt.url`;
   * does not connect. Register commands, then start().
   */
  static async create(options: MqttPublisherOptions): Promise<MqttPublisher> {
    const { config, logger } = options;
    const embedded = config.mqtt.url ? null : await EmbeddedBroker.start({ port: config.mqtt.embeddedPort, logger: logger.child({ part: 'mqtt-broker' }) });
    try {
      const connection = await MqttConnection.create({
        mqtt: config.mqtt,
        station: config.station,
        identity: options.identity,
        logger: logger.child({ part: 'mqtt' }),
        ...(embedded ? { url: embedded.url } : {}),
      });
      const commands = new CommandServer({ connection, logger: logger.child({ part: 'commands' }), ...(options.status ? { status: options.status } : {}) });
      return new MqttPublisher(options, connection, commands, embedded);
    } catch (e) {
      await embedded?.stop();
      throw e;
    }
  }

  /** Opens the outbox, replays what it kept, starts taking commands and connects (in the background). */
  async start(): Promise<void> {
    const { config, logger } = this.options;
    this.outbox = await Outbox.open(join(config.stateDir, 'outbox', 'mqtt'), {
      maxBytes: this.options.outbox?.maxBytes ?? 512 * 1024 * 1024,
      maxAgeMs: this.options.outbox?.maxAgeMs ?? 7 * 24 * 3600 * 1000,
      ...(this.options.outbox?.inlineWriteBudgetMs !== undefined ? { inlineWriteBudgetMs: this.options.outbox.inlineWriteBudgetMs } : {}),
      logger: logger.child({ part: 'outbox' }),
    });
    this.sink = new MqttResultSink({
      connection: this.connection,
      outbox: this.outbox,
      station: config.station,
      deadlineMs: config.inspection.deadlineMs,
      logger: logger.child({ part: 'mqtt-results' }),
      ...(this.options.heatmap ? { heatmap: this.options.heatmap } : {}),
      ...(this.options.metrics ? { metrics: this.options.metrics } : {}),
      ...(this.options.onPublishFailure ? { onPublishFailure: this.options.onPublishFailure } : {}),
    });
    await this.sink.start();
    this.commands.start();
    this.connection.start();
  }

  publish(outcome: InspectionOutcome): void {
    if (this.sink) this.sink.publish(outcome);
    else this.options.logger.error({ seq: outcome?.record?.seq }, 'MQTT publisher not started: result not journaled');
  }

  stats() {
    return this.sink?.stats() ?? null;
  }

  /** The outbox's own figures (null until start() opened it). */
  outboxStats() {
    return this.outbox?.stats() ?? null;
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const bound = this.options.stopTimeoutMs ?? 5000;
      await this.sink?.stop(bound * 0.6);
      await this.commands.stop();
      await this.connection.stop(bound * 0.3);
      await this.outbox?.close();
      await this.embedded?.stop();
    })();
    return this.stopping;
  }
}
