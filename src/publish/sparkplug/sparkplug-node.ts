/**
 * The agent as a Sparkplug B 3.0 edge node with one device (the camera), so SCADA hosts that speak
 * Sparkplug (Ignition, HiveMQ Edge, Tahu...) discover and read the station without custom parsing.
 *
 * Topics: `spBv1.0/<group>/<NBIRTH|NDATA|NDEATH|NCMD>/<edge node>` and `.../<DBIRTH|DDATA|DDEATH|DCMD>/<edge node>/<device>`.
 * Session rules implemented here:
 * - NDEATH is the MQTT Will (QoS 1, not retained) carrying `bdSeq`; bdSeq goes up by one (mod 256) on every
 *   CONNECT and is kept in a state file across restarts, so a host can tell a stale death from a new life.
 * - After each CONNECT (and, when a primary host is configured, once it is ONLINE): NBIRTH with seq 0, then
 *   DBIRTH; every later message of the node (NDATA, DBIRTH, DDATA, DDEATH) carries seq + 1, wrapping
 *   255 -> 0. Births name every metric with its alias and datatype; data messages use aliases only.
 * - NCMD `Node Control/Rebirth` = true re-sends NBIRTH + DBIRTH. DCMD `Config/Threshold` asks the caller
 *   to apply a new normalised threshold and publishes it when accepted.
 * - A clean stop sends DDEATH and NDEATH (same bdSeq) before an MQTT DISCONNECT, which discards the Will.
 * - Primary host (optional): births wait for `spBv1.0/STATE/<host>` {"online": true}; when the host goes
 *   offline the node sends NDEATH, disconnects and connects again to wait for it.
 * Results go out as they come and are never queued: while the node is offline or not yet born they only
 * update the values its next DBIRTH reports (the outbox sink is where results are kept for replay).
 */
import { connect, type IClientOptions, type ISubscriptionMap, type MqttClient } from 'mqtt';
import type { Logger } from 'pino';
import type { InspectionOutcome, ResultSink } from '../result-sink.js';
import { BdSeqStore, nextBdSeq } from './bdseq-store.js';
import {
  DataType,
  SeqCounter,
  decodePayload,
  encodePayload,
  type DecodedMetric,
  type Metric,
  type MetricValue,
  type Payload,
  type PropertySet,
} from './payload.js';

export const SPARKPLUG_NAMESPACE = 'spBv1.0';

export type NodeMessageType = 'NBIRTH' | 'NDATA' | 'NDEATH' | 'NCMD';
export type DeviceMessageType = 'DBIRTH' | 'DDATA' | 'DDEATH' | 'DCMD';

export function nodeTopic(groupId: string, type: NodeMessageType, edgeNodeId: string): string {
  return `${SPARKPLUG_NAMESPACE}/${groupId}/${type}/${edgeNodeId}`;
}

export function deviceTopic(groupId: string, type: DeviceMessageType, edgeNodeId: string, deviceId: string): string {
  return `${SPARKPLUG_NAMESPACE}/${groupId}/${type}/${edgeNodeId}/${deviceId}`;
}

/** Sparkplug 3.0 primary host application state topic. */
export function hostStateTopic(hostId: string): string {
  return `${SPARKPLUG_NAMESPACE}/STATE/${hostId}`;
}

export interface MetricDefinition {
  readonly name: string;
  readonly alias: number;
  readonly datatype: DataType;
  readonly properties?: PropertySet;
}

/** Edge node metrics. Aliases are unique across the node and its device (Sparkplug 3.0). */
export const NODE_METRICS = {
  rebirth: { name: 'Node Control/Rebirth', alias: 1, datatype: DataType.Boolean },
  softwareVersion: { name: 'Properties/Software Version', alias: 2, datatype: DataType.String },
  modelId: { name: 'Model/Id', alias: 3, datatype: DataType.String },
  modelVersion: { name: 'Model/Version', alias: 4, datatype: DataType.String },
} as const satisfies Record<string, MetricDefinition>;

/** Camera device metrics: one inspection result, the pipeline counters, and the writable threshold. */
export const DEVICE_METRICS = {
  /** InspectionRecord.seq: monotonic over the agent's life. */
  recordSeq: { name: 'Inspection/Seq', alias: 10, datatype: DataType.UInt64 },
  partId: { name: 'Inspection/Part Id', alias: 11, datatype: DataType.String },
  capturedAt: { name: 'Inspection/Captured At', alias: 12, datatype: DataType.DateTime },
  score: { name: 'Inspection/Score', alias: 13, datatype: DataType.Double },
  normalizedScore: { name: 'Inspection/Normalized Score', alias: 14, datatype: DataType.Double },
  /** The raw threshold in force for the part (InspectionRecord.threshold). */
  rawThreshold: { name: 'Inspection/Raw Threshold', alias: 15, datatype: DataType.Double },
  verdict: { name: 'Inspection/Verdict', alias: 16, datatype: DataType.String },
  reason: { name: 'Inspection/Reason', alias: 17, datatype: DataType.String },
  latency: {
    name: 'Inspection/Latency',
    alias: 18,
    datatype: DataType.Double,
    properties: { engUnit: { type: DataType.String, value: 'ms' } },
  },
  frames: { name: 'Counters/Frames', alias: 19, datatype: DataType.UInt64 },
  drops: { name: 'Counters/Drops', alias: 20, datatype: DataType.UInt64 },
  /** The decision threshold as a normalised score in (0, 1); 0.5 is the calibrated one. Writable by DCMD. */
  threshold: { name: 'Config/Threshold', alias: 21, datatype: DataType.Double },
} as const satisfies Record<string, MetricDefinition>;

const BD_SEQ_METRIC = 'bdSeq';

const RESULT_METRICS: readonly MetricDefinition[] = [
  DEVICE_METRICS.recordSeq,
  DEVICE_METRICS.partId,
  DEVICE_METRICS.capturedAt,
  DEVICE_METRICS.score,
  DEVICE_METRICS.normalizedScore,
  DEVICE_METRICS.rawThreshold,
  DEVICE_METRICS.verdict,
  DEVICE_METRICS.reason,
  DEVICE_METRICS.latency,
];

/** MQTT connection settings the caller may set; the node owns will, session and reconnection. */
export type SparkplugMqttOptions = Omit<
  IClientOptions,
  'will' | 'clean' | 'reconnectPeriod' | 'resubscribe' | 'queueQoSZero' | 'manualConnect' | 'servers'
>;

export interface SparkplugNodeOptions {
  /** mqtt://, mqtts://, ws:// or wss:// */
  url: string;
  /** Credentials, TLS, protocol version, keepalive, client id (default `ast-edge-spb-<group>-<edge node>`). */
  mqtt?: SparkplugMqttOptions;
  groupId: string;
  edgeNodeId: string;
  /** Default `camera`. */
  deviceId?: string;
  /** JSON file keeping the last bdSeq across restarts; its folder must be writable. */
  stateFile: string;
  /** Wait for this Sparkplug 3.0 primary host application to be ONLINE before births. */
  primaryHostId?: string;
  /** Published as node metric `Properties/Software Version`. */
  softwareVersion: string;
  /** Model in use before the first result names one. */
  model?: { id: string; version: string };
  /** Normalised threshold in force at start, in (0, 1). Default 0.5 (the calibrated one). */
  threshold?: number;
  /**
   * Asked to apply a threshold written by a host (DCMD `Config/Threshold`), after the node checked it is a
   * number in (0, 1). Return (or resolve) true to accept; false or a throw refuses and changes nothing.
   * Absent: the threshold is read-only.
   */
  onThresholdWrite?: (value: number) => boolean | Promise<boolean>;
  logger: Logger;
  /** Wait between connection attempts. Default 2000 ms. */
  reconnectMs?: number;
  /** Bound on `stop()` (DDEATH, NDEATH acknowledged, DISCONNECT); past it the socket is dropped and the broker sends the Will. Default 2000 ms. */
  stopTimeoutMs?: number;
  /**
   * Results held in memory while the session is down (broker away, primary host offline) and sent after
   * the next birth as DDATA with `is_historical` metrics, oldest first; beyond this many the oldest are
   * dropped and counted. 0 turns store-and-forward off. Default 10 000.
   */
  storeWhileOffline?: number;
}

/** Store-and-forward figures of the Sparkplug session. */
export interface SparkplugStoreStats {
  /** Results waiting for the next birth. */
  held: number;
  /** Results sent as historical data since start. */
  forwarded: number;
  /** Results dropped because more were held than `storeWhileOffline`. */
  dropped: number;
}

export interface PipelineCounters {
  frames?: number | bigint;
  drops?: number | bigint;
}

interface CurrentValue {
  value: MetricValue;
  /** ms since the epoch: when the value was measured. */
  timestamp: number;
}

/** Sparkplug forbids `+`, `#` and `/` in group, edge node and device ids. */
const ID_LEVEL = /^[^+#/]+$/;

export class SparkplugNode implements ResultSink {
  readonly name = 'sparkplug';

  private readonly log: Logger;
  private readonly deviceId: string;
  private readonly store: BdSeqStore;
  private readonly seq = new SeqCounter();
  private readonly topics: {
    nbirth: string;
    ndata: string;
    ndeath: string;
    ncmd: string;
    dbirth: string;
    ddata: string;
    ddeath: string;
    dcmd: string;
    state: string | null;
  };
  private readonly values = new Map<MetricDefinition, CurrentValue>();

  private client: MqttClient | null = null;
  private bdSeqValue = 0;
  /** NBIRTH and DBIRTH went out in the current MQTT session. */
  private born = false;
  private hostOnline = false;
  /** Newest primary host STATE timestamp seen; older ones are stale retained messages. */
  private hostStateTimestamp = -Infinity;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private connectFailures = 0;
  private stopping = false;
  /** Commands are handled one at a time, in arrival order. */
  private commands: Promise<void> = Promise.resolve();
  /** Result metrics (is_historical) from while the session was down, oldest first. */
  private held: Metric[][] = [];
  private readonly storeStats = { forwarded: 0, dropped: 0 };

  constructor(private readonly options: SparkplugNodeOptions) {
    this.deviceId = options.deviceId ?? 'camera';
    for (const [what, id] of [['groupId', options.groupId], ['edgeNodeId', options.edgeNodeId], ['deviceId', this.deviceId]] as const) {
      if (!ID_LEVEL.test(id)) throw new Error(`sparkplug ${what} ${JSON.stringify(id)} must be non-empty without "+", "#" or "/"`);
    }
    if (options.primaryHostId !== undefined && !ID_LEVEL.test(options.primaryHostId)) {
      throw new Error(`sparkplug primaryHostId ${JSON.stringify(options.primaryHostId)} must be non-empty without "+", "#" or "/"`);
    }
    const threshold = options.threshold ?? 0.5;
    if (!isNormalisedThreshold(threshold)) throw new Error(`sparkplug threshold must be in (0, 1), got ${threshold}`);

    const { groupId: g, edgeNodeId: e } = options;
    const d = this.deviceId;
    this.topics = {
      nbirth: nodeTopic(g, 'NBIRTH', e),
      ndata: nodeTopic(g, 'NDATA', e),
      ndeath: nodeTopic(g, 'NDEATH', e),
      ncmd: nodeTopic(g, 'NCMD', e),
      dbirth: deviceTopic(g, 'DBIRTH', e, d),
      ddata: deviceTopic(g, 'DDATA', e, d),
      ddeath: deviceTopic(g, 'DDEATH', e, d),
      dcmd: deviceTopic(g, 'DCMD', e, d),
      state: options.primaryHostId === undefined ? null : hostStateTopic(options.primaryHostId),
    };
    this.log = options.logger.child({ sink: 'sparkplug', edgeNode: `${g}/${e}` });
    this.store = new BdSeqStore(options.stateFile);

    const now = Date.now();
    this.values.set(NODE_METRICS.softwareVersion, { value: options.softwareVersion, timestamp: now });
    this.values.set(NODE_METRICS.modelId, { value: options.model?.id ?? null, timestamp: now });
    this.values.set(NODE_METRICS.modelVersion, { value: options.model?.version ?? null, timestamp: now });
    for (const def of RESULT_METRICS) this.values.set(def, { value: null, timestamp: now });
    this.values.set(DEVICE_METRICS.frames, { value: 0n, timestamp: now });
    this.values.set(DEVICE_METRICS.drops, { value: 0n, timestamp: now });
    this.values.set(DEVICE_METRICS.threshold, { value: threshold, timestamp: now });
  }

  /** The bdSeq of the current (or next) MQTT session. */
  get bdSeq(): number {
    return this.bdSeqValue;
  }

  /** Connected, born, and free to publish data. */
  get online(): boolean {
    return this.born && this.client?.connected === true;
  }

  /**
   * Reads and advances bdSeq in the state file (throws if it cannot be written: without it, restarts would
   * repeat bdSeq values) and starts connecting; does not wait for the broker.
   */
  async start(): Promise<void> {
    if (this.client || this.stopping) return;
    let previous: number | null;
    try {
      previous = await this.store.read();
    } catch (err) {
      this.log.warn({ err, file: this.store.file }, 'unreadable sparkplug state file: bdSeq starts again at 0');
      previous = null;
    }
    this.bdSeqValue = nextBdSeq(previous);
    await this.store.write(this.bdSeqValue);
    if (this.stopping) return;

    const { mqtt: mqttOptions = {}, groupId, edgeNodeId } = this.options;
    const client = connect(this.options.url, {
      clientId: `ast-edge-spb-${groupId}-${edgeNodeId}`,
      ...mqttOptions,
      // Sparkplug 3.0: clean session (MQTT 5: clean start, session expiry 0), NDEATH as the Will.
      clean: true,
      will: this.will(),
      // Reconnection is ours: every CONNECT needs a new bdSeq in its Will.
      reconnectPeriod: 0,
      resubscribe: false,
      // Never send a message queued in another session: its seq would be out of order.
      queueQoSZero: false,
    });
    this.client = client;
    client.on('connect', () => this.onConnect());
    client.on('message', (topic, payload) => this.onMessage(topic, payload));
    client.on('close', () => this.onClose());
    client.on('error', (err) => {
      if (this.connectFailures++ === 0) this.log.warn({ err }, 'sparkplug MQTT connection failed; retrying');
      else this.log.debug({ err }, 'sparkplug MQTT connection failed');
    });
    this.log.info({ url: this.options.url, bdSeq: this.bdSeqValue, device: this.deviceId }, 'sparkplug edge node connecting');
  }

  /** One inspection result: a DDATA with every result metric by alias. Never throws, never waits. */
  publish(outcome: InspectionOutcome): void {
    try {
      const r = outcome.record;
      const captured = Date.parse(r.capturedAt);
      const timestamp = Number.isNaN(captured) ? Date.now() : captured;

      if (r.model.id !== this.values.get(NODE_METRICS.modelId)!.value
        || r.model.version !== this.values.get(NODE_METRICS.modelVersion)!.value) {
        this.set(NODE_METRICS.modelId, r.model.id, timestamp);
        this.set(NODE_METRICS.modelVersion, r.model.version, timestamp);
        this.sendData('node', [NODE_METRICS.modelId, NODE_METRICS.modelVersion]);
      }

      const D = DEVICE_METRICS;
      this.set(D.recordSeq, BigInt(r.seq), timestamp);
      this.set(D.partId, r.partId, timestamp);
      this.set(D.capturedAt, timestamp, timestamp);
      this.set(D.score, r.score, timestamp);
      this.set(D.normalizedScore, r.normalizedScore, timestamp);
      this.set(D.rawThreshold, r.threshold, timestamp);
      this.set(D.verdict, r.verdict, timestamp);
      this.set(D.reason, r.reason ?? null, timestamp);
      this.set(D.latency, r.latencyMs, timestamp);
      if (this.online) this.sendData('device', RESULT_METRICS);
      else this.hold();
    } catch (err) {
      this.log.error({ err }, 'sparkplug: could not publish a result');
    }
  }

  /** Store-and-forward figures (results held while the session is down). */
  get forwarding(): SparkplugStoreStats {
    return { held: this.held.length, ...this.storeStats };
  }

  /** Frame and drop counters (totals since start): a DDATA with those that changed. Never throws. */
  reportCounters(counters: PipelineCounters): void {
    try {
      const now = Date.now();
      const changed: MetricDefinition[] = [];
      for (const [def, value] of [[DEVICE_METRICS.frames, counters.frames], [DEVICE_METRICS.drops, counters.drops]] as const) {
        if (value === undefined) continue;
        const next = BigInt(value);
        if (next === this.values.get(def)!.value) continue;
        this.set(def, next, now);
        changed.push(def);
      }
      if (changed.length > 0) this.sendData('device', changed);
    } catch (err) {
      this.log.error({ err }, 'sparkplug: could not publish counters');
    }
  }

  /** The normalised threshold changed by other means (configuration, plain MQTT): published in a DDATA. */
  setThreshold(value: number): void {
    if (!isNormalisedThreshold(value)) {
      this.log.warn({ value }, 'sparkplug: threshold outside (0, 1) ignored');
      return;
    }
    this.set(DEVICE_METRICS.threshold, value, Date.now());
    this.sendData('device', [DEVICE_METRICS.threshold]);
  }

  /** DDEATH and NDEATH (same bdSeq as the Will), then DISCONNECT; bounded by `stopTimeoutMs`. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const client = this.client;
    if (!client) return;

    const goodbye = async (): Promise<void> => {
      if (client.connected) {
        if (this.born) this.send(this.topics.ddeath, { metrics: [] });
        this.born = false;
        await client.publishAsync(this.topics.ndeath, this.deathPayload(), { qos: 1, retain: false });
      }
      await client.endAsync();
    };
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no clean disconnect within ${this.stopTimeoutMs} ms`)), this.stopTimeoutMs);
    });
    try {
      await Promise.race([goodbye(), timeout]);
      this.log.info({ bdSeq: this.bdSeqValue }, 'sparkplug edge node stopped');
    } catch (err) {
      this.log.warn({ err }, 'sparkplug: unclean stop; the broker publishes NDEATH from the Will');
      await new Promise<void>((resolve) => client.end(true, () => resolve()));
    } finally {
      clearTimeout(timer);
    }
  }

  // ---- session ------------------------------------------------------------------------------------------

  private get stopTimeoutMs(): number {
    return this.options.stopTimeoutMs ?? 2000;
  }

  private deathPayload(): Buffer {
    return toBuffer(encodePayload({
      timestamp: Date.now(),
      metrics: [{ name: BD_SEQ_METRIC, datatype: DataType.Int64, value: BigInt(this.bdSeqValue) }],
    }));
  }

  private will(): NonNullable<IClientOptions['will']> {
    return { topic: this.topics.ndeath, payload: this.deathPayload(), qos: 1, retain: false };
  }

  private onConnect(): void {
    const client = this.client!;
    this.connectFailures = 0;
    this.born = false;
    this.hostOnline = false;
    this.log.info({ bdSeq: this.bdSeqValue }, 'sparkplug MQTT connected');
    const subscriptions: ISubscriptionMap = { [this.topics.ncmd]: { qos: 1 }, [this.topics.dcmd]: { qos: 1 } };
    if (this.topics.state) subscriptions[this.topics.state] = { qos: 1 };
    // Packets are processed in order: the subscriptions are in place before NBIRTH reaches any host.
    client.subscribe(subscriptions, (err) => {
      if (err) this.log.warn({ err }, 'sparkplug: subscribing to commands failed');
    });
    if (!this.topics.state) this.birth();
    else this.log.info({ host: this.options.primaryHostId }, 'sparkplug: waiting for the primary host to be online');
  }

  private onClose(): void {
    if (this.born) this.log.warn({ bdSeq: this.bdSeqValue }, 'sparkplug MQTT connection lost');
    this.born = false;
    this.scheduleReconnect();
  }

  /** The next CONNECT after `reconnectMs`, with the next bdSeq persisted first and set in its Will. */
  private scheduleReconnect(): void {
    if (this.stopping || this.reconnectTimer) return;
    this.reconnectTimer = setTimeout(() => {
      void (async () => {
        const next = nextBdSeq(this.bdSeqValue);
        try {
          await this.store.write(next);
        } catch (err) {
          this.log.error({ err, file: this.store.file }, 'sparkplug: could not save bdSeq; a restart may repeat it');
        }
        this.reconnectTimer = null;
        if (this.stopping || !this.client) return;
        this.bdSeqValue = next;
        this.client.options.will = this.will();
        this.client.reconnect();
      })();
    }, this.options.reconnectMs ?? 2000);
  }

  /** NBIRTH (seq 0, bdSeq, Rebirth false, node metrics) then DBIRTH (every device metric with its alias). */
  private birth(): void {
    if (!this.client?.connected) return;
    this.seq.reset();
    const now = Date.now();
    const nodeMetrics: Metric[] = [
      { name: BD_SEQ_METRIC, datatype: DataType.Int64, value: BigInt(this.bdSeqValue), timestamp: now },
      { ...declaration(NODE_METRICS.rebirth), value: false, timestamp: now },
      ...[NODE_METRICS.softwareVersion, NODE_METRICS.modelId, NODE_METRICS.modelVersion].map((def) => this.birthMetric(def)),
    ];
    if (!this.send(this.topics.nbirth, { timestamp: now, metrics: nodeMetrics })) return;
    const deviceMetrics = Object.values(DEVICE_METRICS).map((def) => this.birthMetric(def));
    if (!this.send(this.topics.dbirth, { timestamp: now, metrics: deviceMetrics })) return;
    this.born = true;
    this.log.info({ bdSeq: this.bdSeqValue }, 'sparkplug NBIRTH and DBIRTH sent');
    this.forwardHeld();
  }

  /** Keeps the result just set (the current RESULT_METRICS values) for after the next birth. */
  private hold(): void {
    const limit = this.options.storeWhileOffline ?? 10_000;
    if (limit <= 0) return;
    this.held.push(RESULT_METRICS.map((def) => ({ alias: def.alias, datatype: def.datatype, isHistorical: true, ...this.values.get(def)! })));
    if (this.held.length > limit) {
      this.held.shift();
      if (this.storeStats.dropped++ === 0 || this.storeStats.dropped % 1000 === 0) {
        this.log.warn({ limit, dropped: this.storeStats.dropped }, 'sparkplug: more results held while offline than storeWhileOffline; the oldest are dropped (the result topic\'s outbox still has them)');
      }
    }
  }

  /** After a birth: what was held goes out as historical DDATA, one per result, oldest first. */
  private forwardHeld(): void {
    if (this.held.length === 0) return;
    const total = this.held.length;
    while (this.held.length > 0) {
      if (!this.send(this.topics.ddata, { timestamp: Date.now(), metrics: this.held[0]! })) break;
      this.held.shift();
      this.storeStats.forwarded++;
    }
    this.log.info({ sent: total - this.held.length, left: this.held.length }, 'sparkplug: results from while the session was down sent as historical data');
  }

  private birthMetric(def: MetricDefinition): Metric {
    const { value, timestamp } = this.values.get(def)!;
    return { ...declaration(def), value, timestamp };
  }

  // ---- data ---------------------------------------------------------------------------------------------

  private set(def: MetricDefinition, value: MetricValue, timestamp: number): void {
    this.values.set(def, { value, timestamp });
  }

  /** NDATA or DDATA with the current values of `defs`, by alias. Dropped unless the node is online. */
  private sendData(scope: 'node' | 'device', defs: readonly MetricDefinition[]): void {
    if (!this.online) return;
    const metrics = defs.map((def): Metric => {
      const { value, timestamp } = this.values.get(def)!;
      // The datatype is kept although Sparkplug 3.0 lets data omit it: stateless decoders need it.
      return { alias: def.alias, datatype: def.datatype, value, timestamp };
    });
    this.send(scope === 'node' ? this.topics.ndata : this.topics.ddata, { timestamp: Date.now(), metrics });
  }

  /**
   * Encodes with the next seq and publishes QoS 0, not retained. The seq is only used up when the message
   * goes out, so numbering stays gapless even when a value does not encode.
   */
  private send(topic: string, payload: Omit<Payload, 'seq'>): boolean {
    const client = this.client;
    if (!client?.connected) return false;
    let bytes: Buffer;
    try {
      bytes = toBuffer(encodePayload({ ...payload, seq: this.seq.peek() }));
    } catch (err) {
      this.log.error({ err, topic }, 'sparkplug: payload does not encode; not sent');
      return false;
    }
    this.seq.take();
    client.publish(topic, bytes, { qos: 0, retain: false }, (err) => {
      if (err) this.log.debug({ err, topic }, 'sparkplug: publish failed');
    });
    return true;
  }

  // ---- commands and host state --------------------------------------------------------------------------

  private onMessage(topic: string, payload: Buffer): void {
    if (topic === this.topics.state) {
      this.onHostState(payload);
      return;
    }
    const handler = topic === this.topics.ncmd ? this.onNodeCommand : topic === this.topics.dcmd ? this.onDeviceCommand : null;
    if (!handler) return;
    let metrics: DecodedMetric[];
    try {
      metrics = decodePayload(payload).metrics;
    } catch (err) {
      this.log.warn({ err, topic }, 'sparkplug: command is not a Sparkplug B payload; ignored');
      return;
    }
    this.commands = this.commands
      .then(() => handler.call(this, metrics))
      .catch((err: unknown) => this.log.error({ err, topic }, 'sparkplug: command failed'));
  }

  private async onNodeCommand(metrics: DecodedMetric[]): Promise<void> {
    for (const m of metrics) {
      if (!matches(m, NODE_METRICS.rebirth)) {
        this.log.warn({ metric: m.name ?? `alias ${m.alias}` }, 'sparkplug: NCMD for an unknown metric; ignored');
        continue;
      }
      if (m.value !== true) continue;
      if (this.topics.state && !this.hostOnline) {
        this.log.info('sparkplug: rebirth requested while the primary host is offline; ignored');
        continue;
      }
      this.log.info('sparkplug: rebirth requested');
      this.birth();
    }
  }

  private async onDeviceCommand(metrics: DecodedMetric[]): Promise<void> {
    for (const m of metrics) {
      const metric = m.name ?? `alias ${m.alias}`;
      if (!matches(m, DEVICE_METRICS.threshold)) {
        this.log.warn({ metric }, 'sparkplug: DCMD for a metric that is not writable; ignored');
        continue;
      }
      const typeOk = m.datatype === undefined || m.datatype === DataType.Double || m.datatype === DataType.Float;
      if (!typeOk || typeof m.value !== 'number' || !isNormalisedThreshold(m.value)) {
        this.log.warn({ metric, datatype: m.datatype, value: String(m.value) }, 'sparkplug: invalid threshold write (a Float/Double in (0, 1) is expected); ignored');
        continue;
      }
      const value = m.datatype === DataType.Double ? m.value : shortestFloat32(m.value);
      const write = this.options.onThresholdWrite;
      if (!write) {
        this.log.warn({ value }, 'sparkplug: threshold is read-only here; write ignored');
        continue;
      }
      let accepted = false;
      try {
        accepted = (await write(value)) === true;
      } catch (err) {
        this.log.warn({ err, value }, 'sparkplug: threshold write refused');
        continue;
      }
      if (!accepted) {
        this.log.warn({ value }, 'sparkplug: threshold write refused');
        continue;
      }
      this.log.info({ value }, 'sparkplug: threshold written by a host');
      this.set(DEVICE_METRICS.threshold, value, Date.now());
      this.sendData('device', [DEVICE_METRICS.threshold]);
    }
  }

  /** Sparkplug 3.0 STATE: JSON `{"online": boolean, "timestamp": ms}`, retained by the host. */
  private onHostState(payload: Buffer): void {
    let state: { online?: unknown; timestamp?: unknown };
    try {
      state = JSON.parse(payload.toString('utf8')) as typeof state;
    } catch {
      this.log.warn('sparkplug: primary host STATE is not JSON; ignored');
      return;
    }
    if (typeof state?.online !== 'boolean' || typeof state.timestamp !== 'number') {
      this.log.warn({ state }, 'sparkplug: primary host STATE without online/timestamp; ignored');
      return;
    }
    if (state.timestamp < this.hostStateTimestamp) {
      this.log.debug({ state }, 'sparkplug: stale primary host STATE ignored');
      return;
    }
    this.hostStateTimestamp = state.timestamp;
    this.hostOnline = state.online;
    if (state.online) {
      if (!this.born) {
        this.log.info({ host: this.options.primaryHostId }, 'sparkplug: primary host online');
        this.birth();
      }
    } else if (this.born) {
      this.log.warn({ host: this.options.primaryHostId }, 'sparkplug: primary host offline; disconnecting until it is back');
      void this.leaveSession();
    }
  }

  /** NDEATH and a clean DISCONNECT; the close handler then connects again (with the next bdSeq). */
  private async leaveSession(): Promise<void> {
    const client = this.client;
    if (!client) return;
    this.born = false;
    try {
      await client.publishAsync(this.topics.ndeath, this.deathPayload(), { qos: 1, retain: false });
    } catch (err) {
      this.log.warn({ err }, 'sparkplug: NDEATH not acknowledged');
    }
    if (!this.stopping) client.end(false);
  }
}

/** What a birth declares about a metric besides its value. */
function declaration(def: MetricDefinition): Pick<Metric, 'name' | 'alias' | 'datatype' | 'properties'> {
  return def.properties
    ? { name: def.name, alias: def.alias, datatype: def.datatype, properties: def.properties }
    : { name: def.name, alias: def.alias, datatype: def.datatype };
}

/** Commands may address a metric by alias (preferred) or by name. */
function matches(m: DecodedMetric, def: MetricDefinition): boolean {
  return m.alias !== undefined ? m.alias === BigInt(def.alias) : m.name === def.name;
}

function isNormalisedThreshold(value: number): boolean {
  return Number.isFinite(value) && value > 0 && value < 1;
}

/** A Float write arrives as the nearest float32 (0.7 -> 0.699999988...): read it as its shortest decimal. */
function shortestFloat32(value: number): number {
  if (Math.fround(value) !== value) return value;
  for (let digits = 1; digits <= 9; digits++) {
    const candidate = Number(value.toPrecision(digits));
    if (Math.fround(candidate) === value) return candidate;
  }
  return value;
}

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
