/**
 * The MQTT result sink against a real Mosquitto (MQTT 5) and aedes (3.1.1): one journaled result per part,
 * rejects with message expiry, no loss and no reordering across a broker outage, replay of what a previous
 * process left, missed rejects never sent live, heat maps, metrics, and a sink that never throws.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectAsync, type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import pino from 'pino';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  HeatmapMetaPayloadSchema,
  MetricsPayloadSchema,
  RejectMissedPayloadSchema,
  RejectPayloadSchema,
  ResultPayloadSchema,
  type ResultPayload,
} from '../src/config/mqtt-payloads.js';
import type { InspectionRecord, InspectionVerdict } from '../src/config/result-schema.js';
import { EmbeddedBroker } from '../src/publish/embedded-broker.js';
import { MqttConnection } from '../src/publish/mqtt-connection.js';
import { testMqttConfig } from './support/mqtt-config.js';
import { MqttResultSink, type MqttResultSinkOptions, type OutboxEntry, type OutboxLike } from '../src/publish/mqtt-result-sink.js';
import { Outbox } from '../src/publish/outbox.js';
import type { InspectionOutcome } from '../src/publish/result-sink.js';
import { TestBroker } from './support/mosquitto.js';
import { sleep, until } from './support/wait.js';

const silent = pino({ level: process.env.TEST_LOG ?? 'silent' });
const IDENTITY = { agentVersion: '0.1.0', model: { id: 'demo', version: '1.0.0' }, provider: 'cpu' };

/** The outbox's contract in memory: ids in append order, entries until acknowledged, optional slowness. */
class MemoryOutbox implements OutboxLike {
  readonly entries = new Map<number, OutboxEntry>();
  private nextId = 1;
  appendDelayMs = 0;
  appended = 0;
  async append(topic: string, payload: unknown): Promise<OutboxEntry> {
    const id = this.nextId++;
    if (this.appendDelayMs > 0) await sleep(this.appendDelayMs);
    const entry = { id, topic, payload: structuredClone(payload), enqueuedAt: Date.now() };
    this.entries.set(id, entry);
    this.appended++;
    return entry;
  }
  async ack(id: number): Promise<void> {
    this.entries.delete(id);
  }
  async pending({ afterId = 0, limit = Infinity }: { afterId?: number; limit?: number } = {}): Promise<OutboxEntry[]> {
    return [...this.entries.values()].filter((e) => e.id > afterId).sort((a, b) => a.id - b.id).slice(0, limit);
  }
  stats(): { pending: number } {
    return { pending: this.entries.size };
  }
}

function record(seq: number, verdict: InspectionVerdict, capturedAt = new Date()): InspectionRecord {
  return {
    seq,
    station: 'st1',
    partId: `P-${seq}`,
    capturedAt: capturedAt.toISOString(),
    score: verdict === 'error' ? null : verdict === 'reject' ? 2.5 : 0.4,
    normalizedScore: verdict === 'error' ? null : verdict === 'reject' ? 0.9 : 0.2,
    threshold: verdict === 'error' ? null : 1,
    verdict,
    ...(verdict === 'error' ? { reason: 'deadline missed' } : {}),
    latencyMs: 12.5,
    model: { id: 'demo', version: '1.0.0' },
  };
}

/** Every third part rejected, every seventh an error. */
const verdictOf = (seq: number): InspectionVerdict => (seq % 7 === 6 ? 'error' : seq % 3 === 2 ? 'reject' : 'pass');

interface Received {
  topic: string;
  payload: Buffer;
  packet: IPublishPacket;
}

async function subscriber(url: string, options: IClientOptions = {}): Promise<{ client: MqttClient; messages: Received[] }> {
  const client = await connectAsync(url, { protocolVersion: 5, reconnectPeriod: 200, ...options });
  const messages: Received[] = [];
  client.on('message', (topic, payload, packet) => messages.push({ topic, payload, packet }));
  await client.subscribeAsync('ast/st1/#', { qos: 1 });
  return { client, messages };
}


const json = (m: Received): unknown => JSON.parse(m.payload.toString());
const results = (ms: Received[]): ResultPayload[] => ms.filter((m) => m.topic === 'ast/st1/result').map((m) => ResultPayloadSchema.parse(json(m)));
const on = (ms: Received[], topic: string) => ms.filter((m) => m.topic === `ast/st1/${topic}`);
const distinctSeqs = (ms: Received[]) => new Set(results(ms).map((r) => r.seq));

/** The real durable outbox in a fresh folder (or `dir`), closed after the test. */
async function openOutbox(dir = mkdtempSync(join(tmpdir(), 'ast-mqtt-outbox-'))): Promise<Outbox> {
  const outbox = await Outbox.open(dir, { maxBytes: 1 << 20, maxAgeMs: 3_600_000, logger: silent });
  cleanups.push(() => outbox.close());
  return outbox;
}

let broker: TestBroker;
const cleanups: (() => Promise<unknown> | unknown)[] = [];

async function connection(url = broker.url): Promise<MqttConnection> {
  const conn = await MqttConnection.create({ mqtt: testMqttConfig(url), station: 'st1', identity: IDENTITY, logger: silent, backoff: { initialMs: 100, maxMs: 300 } });
  cleanups.push(() => conn.stop());
  conn.start();
  await conn.waitUntilOnline(5000);
  return conn;
}

async function sink(conn: MqttConnection, outbox: OutboxLike, extra: Partial<MqttResultSinkOptions> = {}): Promise<MqttResultSink> {
  const s = new MqttResultSink({ connection: conn, outbox, station: 'st1', deadlineMs: 5000, logger: silent, ...extra });
  cleanups.push(() => s.stop(1000));
  await s.start();
  return s;
}

beforeAll(async () => {
  broker = await TestBroker.start();
});

afterEach(async () => {
  // Each test's agent connection goes: two alive with one client id would take the session from each other.
  for (const c of cleanups.splice(0).reverse()) await c();
});

afterAll(async () => {
  await broker.stop();
});

describe('MqttResultSink', () => {
  it('publishes one valid, unretained QoS 1 result per part, and a reject with message expiry for reject and error', async () => {
    const sub = await subscriber(broker.url);
    cleanups.push(() => sub.client.endAsync());
    const conn = await connection();
    const outbox = await openOutbox();
    const s = await sink(conn, outbox);

    for (const [seq, verdict] of [[0, 'pass'], [1, 'reject'], [2, 'error']] as const) s.publish({ record: record(seq, verdict) });
    await until('3 results', () => results(sub.messages).length === 3 && on(sub.messages, 'reject').length === 2);

    const got = results(sub.messages);
    expect(got.map((r) => [r.seq, r.verdict, r.historical])).toEqual([[0, 'pass', false], [1, 'reject', false], [2, 'error', false]]);
    for (const m of on(sub.messages, 'result')) {
      expect(m.packet.retain).toBe(false);
      expect(m.packet.qos).toBe(1);
    }
    const rejects = on(sub.messages, 'reject');
    expect(rejects.map((m) => RejectPayloadSchema.parse(json(m)))).toMatchObject([
      { seq: 1, partId: 'P-1', verdict: 'reject', reason: 'score 2.5 at or above threshold 1' },
      { seq: 2, partId: 'P-2', verdict: 'error', reason: 'deadline missed' },
    ]);
    for (const m of rejects) {
      const r = RejectPayloadSchema.parse(json(m));
      expect(Date.parse(r.deadline) - Date.parse(r.capturedAt)).toBe(5000);
      // Seen by a v5 subscriber: the broker passes on what is left of the expiry (the deadline, 5 s, rounded up).
      expect(m.packet.properties?.messageExpiryInterval).toBeGreaterThanOrEqual(4);
      expect(m.packet.properties?.messageExpiryInterval).toBeLessThanOrEqual(5);
      expect(m.packet.properties?.contentType).toBe('application/json');
    }
    await until('acks', () => outbox.stats().pending === 0);
    expect(outbox.stats().commits).toBeGreaterThan(0);
    expect(s.stats()).toMatchObject({ published: { result: 3, reject: 2, rejectMissed: 0 }, failures: 0, pending: 0 });
  });

  it('journals before publishing: nothing reaches the broker until the outbox says durable', async () => {
    const sub = await subscriber(broker.url, { clientId: 'sub-journal' });
    cleanups.push(() => sub.client.endAsync());
    const conn = await connection();
    const outbox = new MemoryOutbox();
    outbox.appendDelayMs = 400;
    const s = await sink(conn, outbox);
    const t0 = Date.now();
    s.publish({ record: record(10, 'reject') });
    s.publish({ record: record(11, 'pass') });
    await sleep(250);
    expect(results(sub.messages)).toHaveLength(0);
    expect(on(sub.messages, 'reject')).toHaveLength(0);
    await until('results', () => results(sub.messages).length === 2);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(400);
    expect(results(sub.messages).map((r) => r.seq)).toEqual([10, 11]);
    await until('acks', () => outbox.entries.size === 0);
  });

  it('loses nothing and keeps order across a broker outage; rejects that missed their deadline go to reject/missed, never to reject', async () => {
    // A persistent session: the subscriber also gets what is published before it has reconnected.
    const sub = await subscriber(broker.url, { clientId: 'sub-outage', clean: false, properties: { sessionExpiryInterval: 600 } });
    cleanups.push(() => sub.client.endAsync());
    const conn = await connection();
    const outbox = await openOutbox();
    // Short deadline so the rejects of the outage expire; a small memory queue so most of the outage's
    // messages wait on disk only and are read back a page at a time.
    const s = await sink(conn, outbox, { deadlineMs: 1000, maxQueued: 8, pageSize: 4 });

    let seq = 0;
    const publishRange = async (n: number, gapMs: number) => {
      for (let i = 0; i < n; i++) {
        s.publish({ record: record(seq, verdictOf(seq)) });
        seq++;
        await sleep(gapMs);
      }
    };
    await publishRange(10, 10);
    await until('before outage', () => distinctSeqs(sub.messages).size === 10);

    await broker.pause();
    await until('agent offline', () => !conn.online);
    const outageFirst = seq;
    await publishRange(20, 50);
    const outageEnd = seq;
    expect(s.stats().pending).toBeGreaterThanOrEqual(20);
    await sleep(1100); // every reject of the outage is past its deadline when the broker returns
    await broker.resume();
    await conn.waitUntilOnline(5000);
    const afterFirst = seq;
    await publishRange(10, 10);

    await until('every result', () => distinctSeqs(sub.messages).size === seq, 15_000);
    await until('outbox drained', () => outbox.stats().pending === 0);

    // Order: the first time each seq shows up, seqs only grow (replays may repeat, never overtake).
    const firsts: number[] = [];
    for (const r of results(sub.messages)) if (!firsts.includes(r.seq)) firsts.push(r.seq);
    expect(firsts).toEqual([...Array(seq).keys()]);
    const bySeq = new Map(results(sub.messages).map((r) => [r.seq, r]));
    for (let i = outageFirst; i < outageEnd; i++) expect(bySeq.get(i)!.historical).toBe(true);
    for (let i = afterFirst; i < seq; i++) expect(bySeq.get(i)!.historical).toBe(false);

    const rejectSeqs = [...Array(seq).keys()].filter((i) => verdictOf(i) !== 'pass');
    const live = new Set(on(sub.messages, 'reject').map((m) => RejectPayloadSchema.parse(json(m)).seq));
    const missed = on(sub.messages, 'reject/missed').map((m) => RejectMissedPayloadSchema.parse(json(m)));
    for (const i of rejectSeqs) {
      if (i >= outageFirst && i < outageEnd) {
        expect(live.has(i), `reject ${i} of the outage must not be live`).toBe(false);
        expect(missed.find((m) => m.seq === i)?.missedByMs).toBeGreaterThan(0);
      } else {
        expect(live.has(i), `reject ${i} should be live`).toBe(true);
      }
    }
    for (const m of on(sub.messages, 'reject')) {
      expect(m.packet.properties?.messageExpiryInterval).toBe(1);
      const r = RejectPayloadSchema.parse(json(m));
      expect(Date.parse(r.publishedAt)).toBeLessThan(Date.parse(r.deadline));
    }
    for (const m of missed) expect(Date.parse(m.publishedAt)).toBeGreaterThanOrEqual(Date.parse(m.deadline));
    expect(s.stats().pending).toBe(0);
  }, 40_000);

  it('replays what a previous process left first (historical), in order, with expired rejects diverted and foreign entries dropped', async () => {
    const sub = await subscriber(broker.url, { clientId: 'sub-replay' });
    cleanups.push(() => sub.client.endAsync());
    const dir = mkdtempSync(join(tmpdir(), 'ast-mqtt-outbox-'));
    const previous = await Outbox.open(dir, { maxBytes: 1 << 20, maxAgeMs: 3_600_000, logger: silent });
    const longAgo = new Date(Date.now() - 60_000);
    // What the previous run journaled (deadline 5 s) and never got acknowledged.
    await previous.append('ast/st1/result', { kind: 'result', record: record(100, 'pass', longAgo) });
    await previous.append('ast/st1/reject', {
      kind: 'reject',
      reject: { seq: 101, station: 'st1', partId: 'P-101', verdict: 'reject', reason: 'x', capturedAt: longAgo.toISOString(), deadline: new Date(longAgo.getTime() + 5000).toISOString() },
    });
    await previous.append('ast/st1/result', { kind: 'result', record: record(101, 'reject', longAgo) });
    await previous.append('ast/st1/other', { something: 'else' });
    const recent = new Date();
    await previous.append('ast/st1/reject', {
      kind: 'reject',
      reject: { seq: 102, station: 'st1', partId: 'P-102', verdict: 'reject', reason: 'x', capturedAt: recent.toISOString(), deadline: new Date(recent.getTime() + 30_000).toISOString() },
    });
    await previous.append('ast/st1/result', { kind: 'result', record: record(102, 'reject', recent) });

    await previous.close();

    const outbox = await openOutbox(dir);
    const conn = await connection();
    const s = await sink(conn, outbox);
    s.publish({ record: record(103, 'pass') });
    await until('results', () => results(sub.messages).length === 4);

    expect(results(sub.messages).map((r) => [r.seq, r.historical])).toEqual([[100, true], [101, true], [102, true], [103, false]]);
    expect(on(sub.messages, 'reject').map((m) => RejectPayloadSchema.parse(json(m)).seq)).toEqual([102]);
    const expiry = on(sub.messages, 'reject')[0]!.packet.properties?.messageExpiryInterval;
    expect(expiry).toBeGreaterThanOrEqual(28);
    expect(expiry).toBeLessThanOrEqual(30);
    const missed = on(sub.messages, 'reject/missed').map((m) => RejectMissedPayloadSchema.parse(json(m)));
    expect(missed).toHaveLength(1);
    expect(missed[0]).toMatchObject({ seq: 101, partId: 'P-101' });
    expect(missed[0]!.missedByMs).toBeGreaterThan(50_000);
    expect(on(sub.messages, 'other')).toHaveLength(0);
    await until('acks', () => outbox.stats().pending === 0);
    expect(s.stats()).toMatchObject({ invalidEntries: 1, published: { result: 4, reject: 1, rejectMissed: 1 } });
  });

  it('publishes heat maps as valid PNGs with metadata, rate-limited, and periodic metrics', async () => {
    const sub = await subscriber(broker.url, { clientId: 'sub-heat' });
    cleanups.push(() => sub.client.endAsync());
    const conn = await connection();
    let snapshots = 0;
    const s = await sink(conn, new MemoryOutbox(), {
      heatmap: { maxPerSecond: 2 },
      metrics: { intervalMs: 200, snapshot: () => ({ inspections: ++snapshots, latencyP95Ms: 41.5, lastScore: null }) },
    });
    const W = 64;
    const frame = { data: new Uint8Array(W * W * 3).fill(128), width: W, height: W };
    const map = { data: new Float32Array(8 * 8).map((_, i) => (i === 27 ? 3 : 0.2)), width: 8, height: 8 };
    const t0 = Date.now();
    for (let i = 0; i < 25; i++) {
      s.publish({ record: record(200 + i, i === 0 ? 'reject' : 'pass'), map, frame });
      await sleep(40);
    }
    const elapsed = Date.now() - t0;
    await until('results', () => results(sub.messages).length === 25);
    await until('metrics', () => on(sub.messages, 'metrics').length >= 2);
    await sleep(300);

    const heatmaps = on(sub.messages, 'heatmap');
    const allowed = Math.floor(elapsed / 500) + 1;
    expect(heatmaps.length).toBeGreaterThanOrEqual(1);
    expect(heatmaps.length).toBeLessThanOrEqual(allowed);
    expect(s.stats().heatmapsSkipped).toBe(25 - heatmaps.length);
    const first = heatmaps[0]!;
    expect(first.payload.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
    const info = await sharp(first.payload).metadata();
    expect(info).toMatchObject({ format: 'png', width: W, height: W });
    expect(first.packet.qos).toBe(0);
    expect(first.packet.properties?.contentType).toBe('image/png');
    const props = first.packet.properties?.userProperties as Record<string, string>;
    expect(props).toMatchObject({ seq: '200', verdict: 'reject', partId: 'P-200', width: String(W) });
    // The hot map cell (row 3, column 3 of 8) is red-ish over the grey frame, a cold one is not.
    const { data } = await sharp(first.payload).raw().toBuffer({ resolveWithObject: true });
    const px = (x: number, y: number) => [...data.subarray((y * W + x) * 3, (y * W + x) * 3 + 3)];
    expect(px(28, 28)[0]).toBeGreaterThan(180);
    expect(px(28, 28)[2]).toBeLessThan(100);
    expect(px(4, 60)[0]).toBeLessThan(128);

    const metas = on(sub.messages, 'heatmap/meta').map((m) => HeatmapMetaPayloadSchema.parse(json(m)));
    expect(metas[0]).toMatchObject({ seq: 200, contentType: 'image/png', width: W, height: W, bytes: first.payload.length, scaleMax: 2 });

    const metrics = on(sub.messages, 'metrics').map((m) => MetricsPayloadSchema.parse(json(m)));
    expect(metrics[0]!.values).toMatchObject({ latencyP95Ms: 41.5, lastScore: null });
    expect(metrics.at(-1)!.publisher.published.result).toBeGreaterThan(0);
  });

  it('works over MQTT 3.1.1 (aedes): results and rejects without expiry properties', async () => {
    const embedded = await EmbeddedBroker.start({ port: 0 });
    cleanups.push(() => embedded.stop());
    const sub = await subscriber(embedded.url, { protocolVersion: 4 });
    cleanups.push(() => sub.client.endAsync(true));
    const conn = await connection(embedded.url);
    expect(conn.protocolVersion).toBe(4);
    const outbox = await openOutbox();
    const s = await sink(conn, outbox);
    s.publish({ record: record(300, 'reject') });
    s.publish({ record: record(301, 'pass') });
    await until('results', () => results(sub.messages).length === 2);
    const rejects = on(sub.messages, 'reject');
    expect(rejects).toHaveLength(1);
    expect(RejectPayloadSchema.parse(json(rejects[0]!)).seq).toBe(300);
    expect(rejects[0]!.packet.properties).toBeUndefined();
    await until('acks', () => outbox.stats().pending === 0);
  });

  it('never throws into the caller: a broken outbox still publishes from memory, bad input is counted', async () => {
    const sub = await subscriber(broker.url, { clientId: 'sub-broken' });
    cleanups.push(() => sub.client.endAsync());
    const conn = await connection();
    const broken: OutboxLike = {
      append: () => {
        throw new Error('disk full');
      },
      ack: () => Promise.reject(new Error('disk full')),
      pending: () => Promise.resolve([]),
    };
    let failuresSeen = 0;
    const s = await sink(conn, broken, { onPublishFailure: () => failuresSeen++ });
    expect(() => s.publish({ record: record(400, 'reject') })).not.toThrow();
    expect(() => s.publish(undefined as unknown as InspectionOutcome)).not.toThrow();
    await until('result from memory', () => results(sub.messages).some((r) => r.seq === 400));
    expect(s.stats().journalFailures).toBe(2);
    expect(s.stats().failures).toBe(1);
    expect(failuresSeen).toBe(0);

    // Offline: publish returns at once, and stop() returns within its bound.
    await conn.stop();
    expect(() => s.publish({ record: record(401, 'pass') })).not.toThrow();
    const t0 = Date.now();
    await s.stop(500);
    expect(Date.now() - t0).toBeLessThan(1000);
  });
});
