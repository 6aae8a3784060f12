/**
 * Results, rejects, heat maps and metrics to MQTT, with the durable outbox between the inspection loop and
 * the broker: every `result` (and, for verdict reject|error, the `reject`) is journaled before it is
 * published at QoS 1, and acknowledged in the outbox on PUBACK. While the broker is away the messages wait
 * in the outbox and memory; when it returns they are replayed in order, older first, and nothing new
 * overtakes them. Delivery is at least once (a message cut off before its PUBACK is sent again): subscribers
 * deduplicate on `seq`.
 *
 * Rejects carry their deadline. A reject goes out on `reject` only while its deadline has not passed, with
 * MQTT 5 message expiry = the time left (whole seconds, rounded up, at least 1) so a broker never hands a
 * stale one to the PLC gateway. A reject that could not be sent before its deadline (outage, restart) is
 * never sent on `reject` — by then the part has left and a kick would hit another one — but on
 * `reject/missed`, an alarm that this defective part may have gone through (and logged as an error); its
 * `result`, replayed with `historical: true`, still records the verdict. Nothing is dropped silently.
 *
 * Heat maps (QoS 0, never journaled, rate-limited) and metrics (QoS 0, periodic) are best effort.
 */
import type { Logger } from 'pino';
import { z } from 'zod';
import {
  RejectSchema,
  type HeatmapMetaPayload,
  type MetricsPayload,
  type PublisherStats,
  type Reject,
  type RejectMissedPayload,
  type RejectPayload,
  type ResultPayload,
} from '../config/mqtt-payloads.js';
import { InspectionRecordSchema, type InspectionRecord, type InspectionVerdict } from '../config/result-schema.js';
import { encodePng, renderHeatmap } from './heatmap.js';
import type { MqttConnection, PublishOptions } from './mqtt-connection.js';
import type { InspectionOutcome, ResultSink } from './result-sink.js';

/** An outbox entry (src/publish/outbox.ts). */
export interface OutboxEntry {
  id: number;
  topic: string;
  payload: unknown;
  enqueuedAt: number;
}

/** What this sink needs of the durable outbox (src/publish/outbox.ts implements it). */
export interface OutboxLike {
  /** Resolves once the entry is durable. Ids grow in call order. */
  append(topic: string, payload: unknown): Promise<OutboxEntry>;
  /** Unknown or already removed ids are ignored. */
  ack(id: number): Promise<void>;
  /** Unacknowledged entries with id > `afterId`, in id order, at most `limit` (after open: what the previous process left). */
  pending(options?: { afterId?: number; limit?: number }): Promise<OutboxEntry[]>;
  stats?(): { pending: number };
}

/** One journaled message, before the delivery fields (`publishedAt`, `historical`) are added. */
export const JournaledMessageSchema = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('result'), record: InspectionRecordSchema }),
  z.strictObject({ kind: z.literal('reject'), reject: RejectSchema }),
]);
export type JournaledMessage = z.infer<typeof JournaledMessageSchema>;

export interface HeatmapOptions {
  /** At most this many heat maps per second (further ones are skipped, not queued). */
  maxPerSecond: number;
  /** Which verdicts get one (default all that have a map). */
  verdicts?: InspectionVerdict[];
  /** Longest side of the PNG, px (default 512). */
  maxSide?: number;
}

export interface MetricsOptions {
  intervalMs: number;
  /** The agent's figures; called once per interval while connected. */
  snapshot: () => Record<string, number | null>;
}

export interface MqttResultSinkOptions {
  connection: MqttConnection;
  outbox: OutboxLike;
  station: string;
  /** inspection.deadlineMs: a reject's deadline is capturedAt + this. */
  deadlineMs: number;
  logger: Logger;
  heatmap?: HeatmapOptions;
  metrics?: MetricsOptions;
  /** QoS 1 publishes awaiting PUBACK at once (default 16); sent in order, so order is kept. */
  maxInflight?: number;
  /**
   * Messages held in memory (default 10 000). Beyond that, during a long outage, newer messages wait in the
   * outbox only and are read back from it, a page at a time, once the older ones are out.
   */
  maxQueued?: number;
  /** Entries read from the outbox at once (default 256). */
  pageSize?: number;
  /** Pause before re-sending a message the broker refused, or re-reading a failing outbox (default 2000 ms). */
  retryMs?: number;
  /** Called on every failed publish (the agent's failure counter). */
  onPublishFailure?: (kind: string) => void;
}

type ItemState = 'journaling' | 'ready' | 'inflight' | 'done';

interface Item {
  message: JournaledMessage;
  entry: OutboxEntry | null;
  state: ItemState;
  /** Journaled before the current connection came up (or by a previous process): a replay. */
  historical: boolean;
  /** Not durable: the outbox append failed. */
  volatile: boolean;
}

const JSON_PROPERTIES = { contentType: 'application/json' };

function rejectFor(record: InspectionRecord, deadlineMs: number): Reject | null {
  if (record.verdict === 'pass') return null;
  const threshold = record.threshold === null ? 'the threshold' : `threshold ${record.threshold}`;
  const reason = record.reason ?? (record.verdict === 'reject' ? `score ${record.score} at or above ${threshold}` : 'no verdict');
  return {
    seq: record.seq,
    station: record.station,
    partId: record.partId,
    verdict: record.verdict,
    reason,
    capturedAt: record.capturedAt,
    deadline: new Date(Date.parse(record.capturedAt) + deadlineMs).toISOString(),
  };
}

const seqOf = (m: JournaledMessage): number => (m.kind === 'result' ? m.record.seq : m.reject.seq);

/**
 * The queue is `items` (in memory, in order) followed, while `spilled`, by outbox entries with id >
 * `lastQueuedId` that are on disk only. Messages appended while spilled wait in `outside` until durable
 * (then they are on disk, to be read back in their turn) or until the spill ends (then they join `items`).
 */
export class MqttResultSink implements ResultSink {
  readonly name = 'mqtt';
  private items: Item[] = [];
  /** Index of the oldest item not done. */
  private head = 0;
  /** Index of the next item to send on this connection. */
  private cursor = 0;
  private inflight = 0;
  /** Changes on every connect and disconnect: callbacks of an older connection are ignored. */
  private generation = 0;
  private upSince = 0;
  private spilled = false;
  private lastQueuedId = 0;
  private outside: Item[] = [];
  private reading = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private metricsTimer: NodeJS.Timeout | null = null;
  private lastHeatmapAt = -Infinity;
  private heatmapBusy = false;
  private started = false;
  private stopped = false;
  private idleWaiters: (() => void)[] = [];
  private readonly counts: PublisherStats = {
    published: { result: 0, reject: 0, rejectMissed: 0, heatmap: 0, metrics: 0 },
    failures: 0,
    journalFailures: 0,
    pending: 0,
    heatmapsSkipped: 0,
    invalidEntries: 0,
  };
  private readonly maxInflight: number;
  private readonly maxQueued: number;
  private readonly pageSize: number;
  private readonly retryMs: number;
  private readonly connection: MqttConnection;
  private readonly outbox: OutboxLike;
  private readonly logger: Logger;
  private readonly onOnline = () => this.connectionUp();
  private readonly onOffline = () => this.connectionDown();

  constructor(private readonly options: MqttResultSinkOptions) {
    this.connection = options.connection;
    this.outbox = options.outbox;
    this.logger = options.logger;
    this.maxInflight = options.maxInflight ?? 16;
    this.maxQueued = Math.max(1, options.maxQueued ?? 10_000);
    this.pageSize = Math.max(1, options.pageSize ?? 256);
    this.retryMs = options.retryMs ?? 2000;
  }

  /** Reads what the outbox holds from before (replayed first, historical) and follows the connection. */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    // Whatever the previous process left is "on disk only" until read.
    this.spilled = true;
    await this.readPage();
    if (this.items.length > 0) this.logger.info({ pending: this.spilled ? `${this.items.length}+` : this.items.length }, 'replaying messages the outbox kept from before');
    this.connection.on('online', this.onOnline);
    this.connection.on('offline', this.onOffline);
    if (this.options.metrics) {
      this.metricsTimer = setInterval(() => this.publishMetrics(), this.options.metrics.intervalMs);
      this.metricsTimer.unref();
    }
    if (this.connection.online) this.connectionUp();
  }

  /** Journals and queues; returns at once and never throws. */
  publish(outcome: InspectionOutcome): void {
    try {
      const { record } = outcome;
      const reject = rejectFor(record, this.options.deadlineMs);
      // The reject first: it is the time-critical one.
      if (reject) this.enqueue({ kind: 'reject', reject });
      this.enqueue({ kind: 'result', record });
      if (this.options.heatmap && outcome.map) this.maybeHeatmap(outcome, this.options.heatmap);
    } catch (err) {
      this.counts.failures++;
      this.logger.error({ err, seq: outcome?.record?.seq }, 'MQTT sink could not take a result');
    }
  }

  /** Waits (up to `timeoutMs`) until everything is journaled and, when connected, acknowledged by the broker. */
  async stop(timeoutMs = 5000): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.metricsTimer) clearInterval(this.metricsTimer);
    this.metricsTimer = null;
    const settled = new Promise<void>((resolve) => {
      this.idleWaiters.push(resolve);
      this.checkIdle();
    });
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([settled, new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
    this.connection.off('online', this.onOnline);
    this.connection.off('offline', this.onOffline);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const pending = this.pendingCount();
    if (pending > 0) this.logger.warn({ pending }, 'MQTT sink stopped with messages undelivered; they stay in the outbox');
  }

  stats(): PublisherStats {
    return { ...this.counts, published: { ...this.counts.published }, pending: this.pendingCount() };
  }

  // ------------------------------------------------------------------------------------------ queue

  private inMemory(): number {
    let n = this.outside.length;
    for (let i = this.head; i < this.items.length; i++) if (this.items[i]!.state !== 'done') n++;
    return n;
  }

  private pendingCount(): number {
    if (!this.spilled) return this.inMemory();
    // On disk beyond memory: the outbox knows how many (it also counts the durable ones held here).
    let volatile = 0;
    for (const it of [...this.items.slice(this.head), ...this.outside]) if (it.volatile && it.state !== 'done') volatile++;
    const onDisk = this.outbox.stats?.().pending;
    return onDisk === undefined ? this.inMemory() : onDisk + volatile;
  }

  private enqueue(message: JournaledMessage): void {
    const item: Item = { message, entry: null, state: 'journaling', historical: false, volatile: false };
    if (!this.spilled && this.items.length - this.head >= this.maxQueued) {
      this.spilled = true;
      this.logger.warn({ held: this.maxQueued }, 'memory queue full: newer messages wait in the outbox only until the older ones are out');
    }
    if (this.spilled) this.outside.push(item);
    else this.items.push(item);
    const topic = message.kind === 'result' ? this.connection.topics.result : this.connection.topics.reject;
    let appended: Promise<OutboxEntry>;
    try {
      appended = this.outbox.append(topic, message);
    } catch (e) {
      appended = Promise.reject(e);
    }
    appended
      .then(
        (entry) => {
          item.entry = entry;
          const out = this.outside.indexOf(item);
          if (out < 0) this.lastQueuedId = Math.max(this.lastQueuedId, entry.id);
          // Durable while spilled: it is on disk now and is read back in its turn.
          else if (this.spilled) this.outside.splice(out, 1);
        },
        (err: unknown) => {
          // Not durable, but still published from memory: losing it now would be worse.
          item.volatile = true;
          this.counts.journalFailures++;
          this.logger.error({ err, kind: message.kind, seq: seqOf(message) }, 'outbox append failed; publishing from memory only');
        },
      )
      .finally(() => {
        if (item.state === 'journaling') item.state = 'ready';
        this.pump();
        this.checkIdle();
      });
  }

  /** Reads the next page of on-disk-only entries; when the disk has no more, the spill ends. */
  private async readPage(): Promise<void> {
    if (this.reading || !this.spilled) return;
    this.reading = true;
    try {
      const page = await this.outbox.pending({ afterId: this.lastQueuedId, limit: this.pageSize });
      for (const entry of page) {
        if (entry.id <= this.lastQueuedId) continue;
        this.lastQueuedId = entry.id;
        const message = this.parseEntry(entry);
        if (message) this.items.push({ message, entry, state: 'ready', historical: !this.connection.online || this.upSince === 0 || entry.enqueuedAt < this.upSince, volatile: false });
      }
      if (page.length < this.pageSize) {
        this.spilled = false;
        // In call order; ones the page already held (durable just before the read) are skipped.
        for (const item of this.outside.splice(0)) {
          if (item.entry && item.entry.id <= this.lastQueuedId) continue;
          if (item.entry) this.lastQueuedId = item.entry.id;
          this.items.push(item);
        }
      }
    } catch (err) {
      this.logger.error({ err }, 'cannot read the outbox; retrying');
      this.scheduleRetry();
    } finally {
      this.reading = false;
    }
  }

  private compact(): void {
    if (this.head > 1024 && this.head > this.items.length / 2) {
      this.items = this.items.slice(this.head);
      this.cursor = Math.max(0, this.cursor - this.head);
      this.head = 0;
    }
  }

  private connectionUp(): void {
    this.generation++;
    this.inflight = 0;
    this.upSince = Date.now();
    for (let i = this.head; i < this.items.length; i++) {
      const item = this.items[i]!;
      if (item.state === 'inflight') item.state = 'ready';
      if (item.state !== 'done') item.historical = true;
    }
    for (const item of this.outside) item.historical = true;
    this.cursor = this.head;
    const replay = this.pendingCount();
    if (replay > 0) this.logger.info({ messages: replay }, 'broker connected: replaying queued messages in order');
    this.pump();
  }

  private connectionDown(): void {
    this.generation++;
    this.inflight = 0;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    for (let i = this.head; i < this.items.length; i++) {
      const item = this.items[i]!;
      if (item.state === 'inflight') item.state = 'ready';
    }
    this.cursor = this.head;
  }

  private parseEntry(entry: OutboxEntry): JournaledMessage | null {
    const parsed = JournaledMessageSchema.safeParse(entry.payload);
    if (parsed.success) return parsed.data;
    this.counts.invalidEntries++;
    this.logger.error({ entry, problem: parsed.error.issues[0] }, 'outbox entry is not a message of this agent; logged here in full and acknowledged');
    this.outbox.ack(entry.id).catch((err: unknown) => this.logger.warn({ err, id: entry.id }, 'outbox ack failed'));
    return null;
  }

  private scheduleRetry(): void {
    if (this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.pump();
    }, this.retryMs);
  }

  /** Sends ready messages in order while connected, up to `maxInflight`; a message still journaling holds back the ones after it. */
  private pump(): void {
    if (!this.connection.online || this.retryTimer) return;
    while (this.inflight < this.maxInflight) {
      if (this.cursor >= this.items.length) {
        if (this.spilled && !this.reading) void this.readPage().then(() => this.pump());
        return;
      }
      const item = this.items[this.cursor]!;
      if (item.state === 'journaling') return;
      this.cursor++;
      if (item.state !== 'ready') continue;
      this.send(item);
    }
  }

  private send(item: Item): void {
    const generation = this.generation;
    item.state = 'inflight';
    this.inflight++;
    const { topic, payload, properties, kind } = this.render(item);
    this.connection.publish(topic, payload, { qos: 1, retain: false, properties }).then(
      () => {
        if (generation !== this.generation) return;
        this.inflight--;
        item.state = 'done';
        this.counts.published[kind]++;
        if (item.entry) {
          const id = item.entry.id;
          this.outbox.ack(id).catch((err: unknown) => this.logger.warn({ err, id }, 'outbox ack failed (the message may be sent again after a restart)'));
        }
        while (this.head < this.items.length && this.items[this.head]!.state === 'done') this.head++;
        this.compact();
        this.pump();
        this.checkIdle();
      },
      (err: unknown) => {
        this.counts.failures++;
        this.options.onPublishFailure?.(kind);
        if (generation !== this.generation) {
          this.logger.debug({ kind }, 'publish cut off by a disconnect; it will be replayed');
          return;
        }
        // The broker refused it (MQTT 5 reason code) or the client failed: retry it, in order, after a pause.
        this.inflight--;
        item.state = 'ready';
        this.logger.error({ err, topic, kind }, 'publish refused; retrying');
        const at = this.items.indexOf(item, this.head);
        if (at >= 0) this.cursor = Math.min(this.cursor, at);
        this.scheduleRetry();
      },
    );
  }

  private render(item: Item): { topic: string; payload: string; properties: PublishOptions['properties']; kind: 'result' | 'reject' | 'rejectMissed' } {
    const now = Date.now();
    const publishedAt = new Date(now).toISOString();
    const topics = this.connection.topics;
    const message = item.message;
    if (message.kind === 'result') {
      const payload: ResultPayload = { ...message.record, publishedAt, historical: item.historical };
      return { topic: topics.result, payload: JSON.stringify(payload), properties: JSON_PROPERTIES, kind: 'result' };
    }
    const reject = message.reject;
    const left = Date.parse(reject.deadline) - now;
    if (left > 0) {
      const payload: RejectPayload = { ...reject, publishedAt };
      const messageExpiryInterval = Math.max(1, Math.ceil(left / 1000));
      return { topic: topics.reject, payload: JSON.stringify(payload), properties: { ...JSON_PROPERTIES, messageExpiryInterval }, kind: 'reject' };
    }
    const missed: RejectMissedPayload = { ...reject, publishedAt, missedByMs: -left };
    this.logger.error(
      { seq: reject.seq, partId: reject.partId, deadline: reject.deadline, missedByMs: -left },
      'reject could not be delivered before its deadline: not sent as a live reject; alarm on reject/missed',
    );
    return { topic: topics.rejectMissed, payload: JSON.stringify(missed), properties: JSON_PROPERTIES, kind: 'rejectMissed' };
  }

  private checkIdle(): void {
    if (this.idleWaiters.length === 0) return;
    const journaling = this.outside.some((i) => i.state === 'journaling') || this.items.slice(this.head).some((i) => i.state === 'journaling');
    const drained = !this.connection.online || (!this.spilled && this.inMemory() === 0);
    if (journaling || !drained) return;
    for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

// ------------------------------------------------------------------------------- heat maps, metrics

  private maybeHeatmap(outcome: InspectionOutcome, options: HeatmapOptions): void {
    const { record, map } = outcome;
    if (!map || (options.verdicts && !options.verdicts.includes(record.verdict))) return;
    const now = performance.now();
    if (!this.connection.online || this.heatmapBusy || now - this.lastHeatmapAt < 1000 / options.maxPerSecond || record.threshold === null || !(record.threshold > 0)) {
      this.counts.heatmapsSkipped++;
      return;
    }
    this.lastHeatmapAt = now;
    this.heatmapBusy = true;
    const scaleMax = 2 * record.threshold;
    let width = 0;
    let height = 0;
    // Drawn on a later turn (a few ms of CPU), encoded off the main thread: publish() has long returned.
    new Promise<Buffer>((resolve, reject) =>
      setImmediate(() => {
        try {
          const image = renderHeatmap(map, scaleMax, outcome.frame, options.maxSide ?? 512);
          ({ width, height } = image);
          resolve(encodePng(image));
        } catch (e) {
          reject(e as Error);
        }
      }),
    )
      .then(async (png) => {
        const meta: HeatmapMetaPayload = {
          seq: record.seq,
          station: record.station,
          partId: record.partId,
          capturedAt: record.capturedAt,
          verdict: record.verdict,
          score: record.score,
          normalizedScore: record.normalizedScore,
          threshold: record.threshold,
          contentType: 'image/png',
          width,
          height,
          scaleMax,
          bytes: png.length,
        };
        const userProperties = Object.fromEntries(
          Object.entries(meta).filter(([k]) => k !== 'contentType').map(([k, v]) => [k, v === null ? '' : String(v)]),
        );
        const topics = this.connection.topics;
        await this.connection.publish(topics.heatmapMeta, JSON.stringify(meta), { qos: 0, properties: JSON_PROPERTIES });
        await this.connection.publish(topics.heatmap, png, { qos: 0, properties: { contentType: 'image/png', userProperties } });
        this.counts.published.heatmap++;
      })
      .catch((err: unknown) => {
        this.counts.heatmapsSkipped++;
        this.logger.debug({ err, seq: record.seq }, 'heat map not published');
      })
      .finally(() => {
        this.heatmapBusy = false;
      });
  }

  private publishMetrics(): void {
    const metrics = this.options.metrics;
    if (!metrics || !this.connection.online) return;
    let values: Record<string, number | null>;
    try {
      values = metrics.snapshot();
    } catch (err) {
      this.logger.warn({ err }, 'metrics snapshot failed');
      return;
    }
    const payload: MetricsPayload = { station: this.options.station, at: new Date().toISOString(), values, publisher: this.stats() };
    this.connection.publish(this.connection.topics.metrics, JSON.stringify(payload), { qos: 0, properties: JSON_PROPERTIES }).then(
      () => this.counts.published.metrics++,
      (err: unknown) => this.logger.debug({ err }, 'metrics not published'),
    );
  }
}
