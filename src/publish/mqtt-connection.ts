/**
 * The agent's one connection to the MQTT broker, built from the config's `mqtt` block: MQTT 5 first and
 * MQTT 3.1.1 when the broker refuses 5 (aedes, old Mosquitto), TLS from files, credentials, retained
 * availability with a last will, reconnection with exponential backoff, and subscriptions that survive
 * reconnects.
 *
 * One mqtt.js client is one network connection (`reconnectPeriod: 0`); this class makes the next one.
 * That keeps two things under our control that mqtt.js would otherwise do on its own: (1) it replays its
 * in-memory store of unacknowledged QoS 1 publishes on reconnect and queues publishes made while offline —
 * the durable outbox must be the only thing that re-sends results, so that replays are marked historical,
 * expired rejects are never re-sent live and nothing is sent twice by two mechanisms; (2) its reconnect
 * period is a fixed interval, where a fleet of stations after a broker restart wants backoff with jitter.
 * A publish on a connection that breaks before its PUBACK fails, and the caller keeps it for the next one.
 */
import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import { connect, type IClientOptions, type IClientSubscribeOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import type { Logger } from 'pino';
import type { AgentConfig } from '../config/agent-schema.js';
import type { StatusOffline, StatusOnline } from '../config/mqtt-payloads.js';
import { stationTopics, topicMatches, type StationTopics } from './topics.js';

export type MqttConfig = AgentConfig['mqtt'];
export type ProtocolVersion = 4 | 5;
export type ConnectionState = 'idle' | 'connecting' | 'online' | 'reconnecting' | 'stopped';

/** What the retained `online` status says about this agent. */
export interface AgentIdentity {
  agentVersion: string;
  model: { id: string; version: string } | null;
  provider: string | null;
}

export interface MqttConnectionOptions {
  mqtt: MqttConfig;
  station: string;
  identity: AgentIdentity;
  logger: Logger;
  /** Broker address overriding `mqtt.url` (the embedded broker's). */
  url?: string;
  /** Wait before reconnecting: `initialMs`, doubled per failed attempt up to `maxMs`, ±20 % jitter. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** A connection attempt without CONNACK for this long is abandoned. */
  connectTimeoutMs?: number;
  /** Where AST_EDGE_MQTT_PASSWORD is read (process.env). */
  env?: Record<string, string | undefined>;
}

export interface PublishOptions {
  qos?: 0 | 1;
  retain?: boolean;
  /** MQTT 5 properties; dropped on a 3.1.1 connection. */
  properties?: IPublishPacket['properties'];
}

export type MessageHandler = (topic: string, payload: Buffer, packet: IPublishPacket) => void;

export interface SubscribeOptions {
  qos?: 0 | 1;
  /**
   * Ask the broker not to send retained messages on subscribe (MQTT 5 retain handling 2). 3.1.1 has no such
   * option: there they arrive with `packet.retain` set, for the handler to skip.
   */
  noRetained?: boolean;
}

export interface OnlineInfo {
  protocolVersion: ProtocolVersion;
  /** Counts connections since start (1 for the first). */
  connection: number;
}

interface ConnectionEvents {
  online: [OnlineInfo];
  offline: [reason: string];
}

export class NotConnectedError extends Error {
  constructor() {
    super('not connected to the MQTT broker');
    this.name = 'NotConnectedError';
  }
}

/** The broker said it does not speak the protocol level we asked for (3.1.1 code 1, MQTT 5 code 0x84). */
function isProtocolRefusal(e: unknown): boolean {
  const code = (e as { code?: unknown }).code;
  return code === 1 || code === 0x84;
}

interface Subscription {
  filter: string;
  handler: MessageHandler;
  options: Required<SubscribeOptions>;
}

async function readTlsFile(what: 'ca' | 'cert' | 'key', path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    throw new Error(`mqtt.tls.${what}: cannot read ${path} (${code})`, { cause: e });
  }
}

export class MqttConnection extends EventEmitter<ConnectionEvents> {
  readonly topics: StationTopics;
  readonly clientId: string;
  private stateNow: ConnectionState = 'idle';
  private client: MqttClient | null = null;
  private version: ProtocolVersion;
  private identity: AgentIdentity;
  private onlineSince: Date | null = null;
  private connections = 0;
  private failures = 0;
  private lastProblem: string | null = null;
  private outageStartedAt: number | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private readonly subscriptions: Subscription[] = [];
  private readonly logger: Logger;
  private readonly backoff: { initialMs: number; maxMs: number };

  private constructor(
    readonly url: string,
    private readonly options: MqttConnectionOptions,
    private readonly clientOptions: IClientOptions,
  ) {
    super();
    const { mqtt, station } = options;
    this.topics = stationTopics(mqtt.topicPrefix, station);
    this.clientId = mqtt.clientId ?? `ast-edge-${station}`;
    this.version = mqtt.protocolVersion;
    this.identity = { ...options.identity };
    this.logger = options.logger;
    this.backoff = { initialMs: options.backoff?.initialMs ?? 1000, maxMs: options.backoff?.maxMs ?? 15_000 };
  }

  /** Checks the settings and reads the TLS files (a missing one is an error naming it); does not connect. */
  static async create(options: MqttConnectionOptions): Promise<MqttConnection> {
    const { mqtt } = options;
    const url = options.url ?? mqtt.url;
    if (!url) throw new Error('mqtt.url is not set (start the embedded broker and pass its url)');
    const secure = /^(mqtts|wss):\/\//.test(url);
    const clientOptions: IClientOptions = {};
    if (mqtt.tls) {
      if (!secure) throw new Error(`mqtt.tls is set but mqtt.url ${url} is not mqtts:// or wss:// (nothing would be encrypted)`);
      const { ca, cert, key, rejectUnauthorized } = mqtt.tls;
      if ((cert === undefined) !== (key === undefined)) throw new Error('mqtt.tls: cert and key go together (client certificate authentication)');
      if (ca) clientOptions.ca = await readTlsFile('ca', ca);
      if (cert) clientOptions.cert = await readTlsFile('cert', cert);
      if (key) clientOptions.key = await readTlsFile('key', key);
      clientOptions.rejectUnauthorized = rejectUnauthorized;
    }
    const password = (options.env ?? process.env).AST_EDGE_MQTT_PASSWORD ?? mqtt.password;
    if (mqtt.username !== undefined) clientOptions.username = mqtt.username;
    if (password !== undefined) clientOptions.password = password;
    return new MqttConnection(url, options, clientOptions);
  }

  /** Credentials and TLS material as read at create(), for a second session on the same broker (Sparkplug). */
  get sessionOptions(): IClientOptions {
    return { ...this.clientOptions, protocolVersion: this.version, keepalive: this.options.mqtt.keepaliveS };
  }

  get state(): ConnectionState {
    return this.stateNow;
  }

  get online(): boolean {
    return this.stateNow === 'online';
  }

  /** Protocol level of the current (or next) connection. */
  get protocolVersion(): ProtocolVersion {
    return this.version;
  }

  /** The retained `online` status as published on the current connection (null while offline). */
  get status(): StatusOnline | null {
    return this.onlineSince ? this.onlinePayload(this.onlineSince) : null;
  }

  start(): void {
    if (this.stateNow !== 'idle') return;
    this.stateNow = 'connecting';
    this.logger.info({ url: this.url, clientId: this.clientId, protocolVersion: this.version }, 'connecting to MQTT broker');
    this.attempt();
  }

  /** Resolves when online; rejects after `timeoutMs`. */
  waitUntilOnline(timeoutMs: number): Promise<void> {
    if (this.online) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('online', done);
        reject(new Error(`not connected to ${this.url} within ${timeoutMs} ms${this.lastProblem ? ` (${this.lastProblem})` : ''}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      this.once('online', done);
    });
  }

  /** Resolves when the broker acknowledged (QoS 1) or the packet was written (QoS 0); never queues offline. */
  publish(topic: string, payload: Buffer | string, options: PublishOptions = {}): Promise<void> {
    const client = this.client;
    if (!client || this.stateNow !== 'online') return Promise.reject(new NotConnectedError());
    return new Promise((resolve, reject) => {
      const publishOptions = {
        qos: options.qos ?? 0,
        retain: options.retain ?? false,
        ...(this.version === 5 && options.properties ? { properties: options.properties } : {}),
      };
      try {
        client.publish(topic, payload, publishOptions, (err) => (err ? reject(err) : resolve()));
      } catch (e) {
        reject(e as Error);
      }
    });
  }

  /** Handler for messages matching `filter`, subscribed now and on every reconnect; returns an unsubscribe. */
  subscribe(filter: string, handler: MessageHandler, options: SubscribeOptions = {}): () => void {
    const sub: Subscription = { filter, handler, options: { qos: options.qos ?? 1, noRetained: options.noRetained ?? false } };
    this.subscriptions.push(sub);
    if (this.client && this.online) this.subscribeOn(this.client, [sub]);
    return () => {
      const i = this.subscriptions.indexOf(sub);
      if (i < 0) return;
      this.subscriptions.splice(i, 1);
      const stillWanted = this.subscriptions.some((s) => s.filter === filter);
      if (!stillWanted && this.client && this.online) this.client.unsubscribe(filter, () => {});
    };
  }

  /** Changes what the `online` status says (a model swap) and republishes it when connected. */
  updateIdentity(patch: Partial<AgentIdentity>): void {
    this.identity = { ...this.identity, ...patch };
    if (this.client && this.onlineSince) this.publishOnline(this.client, this.onlineSince);
  }

  /**
   * Publishes the retained `offline` (shutdown) status and disconnects cleanly (so the broker drops the
   * last will); no reconnect afterwards. Bounded by `timeoutMs`.
   */
  async stop(timeoutMs = 3000): Promise<void> {
    if (this.stateNow === 'stopped') return;
    const wasOnline = this.online;
    this.stateNow = 'stopped';
    this.onlineSince = null;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const client = this.client;
    if (!client) return;
    if (wasOnline) this.emit('offline', 'stopped');
    const bounded = (p: Promise<unknown>, ms: number) =>
      Promise.race([p.then(() => true, () => false), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())]);
    if (wasOnline) {
      const offline: StatusOffline = { state: 'offline', station: this.options.station, reason: 'shutdown', at: new Date().toISOString() };
      const sent = new Promise<void>((resolve, reject) =>
        client.publish(this.topics.status, JSON.stringify(offline), { qos: 1, retain: true }, (err) => (err ? reject(err) : resolve())),
      );
      if (!(await bounded(sent, timeoutMs / 2))) this.logger.warn('offline status not acknowledged before shutdown');
      if (await bounded(client.endAsync(false), timeoutMs / 2)) {
        this.logger.info('disconnected from MQTT broker');
        return;
      }
    }
    await bounded(client.endAsync(true), 500);
  }

  private onlinePayload(since: Date): StatusOnline {
    return {
      state: 'online',
      station: this.options.station,
      since: since.toISOString(),
      agent: { name: 'ast-edge', version: this.identity.agentVersion },
      model: this.identity.model,
      provider: this.identity.provider,
      protocolVersion: this.version,
    };
  }

  private attempt(): void {
    const version = this.version;
    const will: StatusOffline = { state: 'offline', station: this.options.station, reason: 'connection-lost' };
    const client = connect(this.url, {
      ...this.clientOptions,
      protocolVersion: version,
      clientId: this.clientId,
      keepalive: this.options.mqtt.keepaliveS,
      // Commands sent while the agent was away are stale; results do not depend on the session (outbox).
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: this.options.connectTimeoutMs ?? 10_000,
      queueQoSZero: false,
      resubscribe: false,
      will: {
        topic: this.topics.status,
        payload: Buffer.from(JSON.stringify(will)),
        qos: 1,
        retain: true,
        ...(version === 5 ? { properties: { contentType: 'application/json' } } : {}),
      },
    });
    this.client = client;
    let problem: Error | null = null;
    let fallBack = false;
    client.on('error', (e) => {
      problem = e;
      if (version === 5 && isProtocolRefusal(e)) fallBack = true;
    });
    client.on('disconnect', (packet) => {
      problem = new Error(`broker disconnected us (reason code ${packet.reasonCode ?? 0})`);
    });
    client.on('connect', () => {
      if (this.client !== client || this.stateNow === 'stopped') return;
      this.onConnected(client);
    });
    client.on('message', (topic, payload, packet) => this.dispatch(topic, payload, packet));
    client.once('close', () => {
      if (this.client !== client) return;
      // Listeners hear `offline` first; then every publish still waiting for its PUBACK fails, and the callers
      // keep those messages for the next connection.
      if (this.stateNow !== 'stopped') this.onClosed(problem, fallBack);
      client.end(true);
    });
  }

  private onConnected(client: MqttClient): void {
    const since = new Date();
    this.connections++;
    this.failures = 0;
    this.lastProblem = null;
    this.onlineSince = since;
    this.stateNow = 'online';
    const offlineForMs = this.outageStartedAt === null ? undefined : Date.now() - this.outageStartedAt;
    this.outageStartedAt = null;
    this.logger.info({ url: this.url, protocolVersion: this.version, offlineForMs }, 'connected to MQTT broker');
    this.publishOnline(client, since);
    this.subscribeOn(client, this.subscriptions);
    this.emit('online', { protocolVersion: this.version, connection: this.connections });
  }

  private onClosed(problem: Error | null, fallBack: boolean): void {
    const wasOnline = this.stateNow === 'online';
    const reason = problem?.message ?? 'connection closed';
    this.onlineSince = null;
    this.stateNow = this.connections > 0 ? 'reconnecting' : 'connecting';
    if (wasOnline) {
      this.outageStartedAt = Date.now();
      this.logger.warn({ reason }, 'connection to MQTT broker lost; reconnecting');
      this.emit('offline', reason);
    }
    if (fallBack) {
      this.version = 4;
      this.logger.warn({ url: this.url }, 'broker refused MQTT 5; using MQTT 3.1.1 (no message expiry or user properties)');
      this.retryTimer = setTimeout(() => this.attempt(), 0);
      return;
    }
    this.failures++;
    if (!wasOnline && reason !== this.lastProblem) {
      // Once per outage and again only when the reason changes: not on every retry.
      this.logger.warn({ url: this.url, reason }, 'cannot connect to MQTT broker; retrying with backoff');
    } else if (!wasOnline) {
      this.logger.debug({ reason, attempt: this.failures }, 'MQTT connect attempt failed');
    }
    this.lastProblem = reason;
    if (this.outageStartedAt === null) this.outageStartedAt = Date.now();
    // First retry after initialMs (a broker restart), doubling per failure; jitter spreads a fleet of stations.
    const base = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** (this.failures - 1));
    this.retryTimer = setTimeout(() => this.attempt(), base * (0.8 + 0.4 * Math.random()));
  }

  private publishOnline(client: MqttClient, since: Date): void {
    const payload = JSON.stringify(this.onlinePayload(since));
    const properties = this.version === 5 ? { properties: { contentType: 'application/json' } } : {};
    client.publish(this.topics.status, payload, { qos: 1, retain: true, ...properties }, (err) => {
      if (err && this.client === client && this.online) this.logger.warn({ err }, 'online status not published');
    });
  }

  private subscribeOn(client: MqttClient, subs: Subscription[]): void {
    if (subs.length === 0) return;
    const map: Record<string, IClientSubscribeOptions> = {};
    for (const s of subs) {
      const prev = map[s.filter];
      map[s.filter] = {
        qos: prev ? (Math.max(prev.qos, s.options.qos) as 0 | 1) : s.options.qos,
        ...(this.version === 5 && s.options.noRetained && (!prev || prev.rh === 2) ? { rh: 2 } : {}),
      };
    }
    client.subscribe(map, (err, granted) => {
      if (err) {
        if (this.client === client && this.online) this.logger.error({ err, filters: Object.keys(map) }, 'subscribe failed');
        return;
      }
      const refused = (granted ?? []).filter((g) => g.qos === 128).map((g) => g.topic);
      if (refused.length > 0) this.logger.error({ filters: refused }, 'broker refused subscriptions (ACL?)');
    });
  }

  private dispatch(topic: string, payload: Buffer, packet: IPublishPacket): void {
    for (const s of [...this.subscriptions]) {
      if (!topicMatches(s.filter, topic)) continue;
      try {
        s.handler(topic, payload, packet);
      } catch (err) {
        this.logger.error({ err, topic }, 'message handler failed');
      }
    }
  }
}
