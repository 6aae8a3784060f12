/**
 * The whole MQTT side as the agent uses it: embedded broker when no url is set, commands, and results
 * journaled across an agent restart while the broker is down (nothing lost, replayed as historical).
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectAsync, type MqttClient } from 'mqtt';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { AgentMetrics } from '../src/agent/agent-metrics.js';
import { AgentConfigSchema } from '../src/config/agent-schema.js';
import { CommandResponseSchema, ResultPayloadSchema, StatusPayloadSchema, type ResultPayload } from '../src/config/mqtt-payloads.js';
import type { InspectionRecord } from '../src/config/result-schema.js';
import { MqttPublisher } from '../src/publish/mqtt-publisher.js';
import { freePort, TestBroker } from './support/mosquitto.js';
import { until } from './support/wait.js';

const silent = pino({ level: 'silent' });
const IDENTITY = { agentVersion: '0.1.0', model: { id: 'demo', version: '1.0.0' }, provider: 'cpu' };

function config(stateDir: string, mqtt: Record<string, unknown>) {
  return AgentConfigSchema.parse({ station: 'st1', source: { kind: 'test' }, model: { bundle: '/nowhere' }, mqtt, stateDir, inspection: { deadlineMs: 60_000 } });
}

function record(seq: number): InspectionRecord {
  return {
    seq,
    station: 'st1',
    partId: `P-${seq}`,
    capturedAt: new Date().toISOString(),
    score: 2,
    normalizedScore: 0.8,
    threshold: 1,
    verdict: seq % 2 ? 'reject' : 'pass',
    latencyMs: 5,
    model: { id: 'demo', version: '1.0.0' },
  };
}


async function listen(url: string, options: Parameters<typeof connectAsync>[1] = {}): Promise<{ client: MqttClient; got: { topic: string; body: unknown }[] }> {
  const client = await connectAsync(url, { reconnectPeriod: 200, ...options });
  const got: { topic: string; body: unknown }[] = [];
  client.on('message', (topic, payload) => got.push({ topic, body: JSON.parse(payload.toString()) }));
  await client.subscribeAsync('ast/st1/#', { qos: 1 });
  return { client, got };
}

const results = (got: { topic: string; body: unknown }[]): ResultPayload[] => got.filter((m) => m.topic === 'ast/st1/result').map((m) => ResultPayloadSchema.parse(m.body));

let broker: TestBroker;
beforeAll(async () => {
  broker = await TestBroker.start();
});
afterAll(async () => {
  await broker.stop();
});

describe('MqttPublisher', () => {
  it('runs on the embedded broker when mqtt.url is not set: results, commands, status', async () => {
    const port = await freePort();
    const publisher = await MqttPublisher.create({ config: config(mkdtempSync(join(tmpdir(), 'ast-pub-')), { embeddedPort: port }), identity: IDENTITY, logger: silent });
    publisher.commands.register('ping', { schema: z.strictObject({ n: z.int() }), handler: ({ n }) => ({ pong: n + 1 }) });
    await publisher.start();
    expect(publisher.embedded?.url).toBe(`mqtt://127.0.0.1:${port}`);
    await publisher.connection.waitUntilOnline(5000);
    expect(publisher.connection.protocolVersion).toBe(4);

    const { client, got } = await listen(publisher.embedded!.url, { protocolVersion: 4 });
    publisher.publish({ record: record(1) });
    publisher.publish({ record: record(2) });
    await until('results', () => results(got).length === 2);
    expect(got.filter((m) => m.topic === 'ast/st1/reject')).toHaveLength(1);
    expect(StatusPayloadSchema.parse(got.find((m) => m.topic === 'ast/st1/status')!.body).state).toBe('online');

    await client.publishAsync('ast/st1/cmd/ping', JSON.stringify({ n: 41, transaction: 'p' }), { qos: 1 });
    const answer = await until('pong', () => got.find((m) => m.topic === 'ast/st1/cmd/ping/response'));
    expect(CommandResponseSchema.parse(answer.body)).toEqual({ ok: true, transaction: 'p', pong: 42 });
    expect(publisher.stats()).toMatchObject({ published: { result: 2, reject: 1 }, pending: 0 });

    await client.endAsync(true);
    await publisher.stop();
    expect(publisher.embedded!.connectedClients).toBe(0);
  });

  it('loses nothing across an agent restart while the broker is down: the next run replays, historical', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'ast-pub-'));
    const cfg = config(stateDir, { url: broker.url });
    const sub = await listen(broker.url, { protocolVersion: 5, clientId: 'sub-restart', clean: false, properties: { sessionExpiryInterval: 600 } });

    const first = await MqttPublisher.create({ config: cfg, identity: IDENTITY, logger: silent });
    await first.start();
    await first.connection.waitUntilOnline(5000);
    first.publish({ record: record(0) });
    await until('first result', () => results(sub.got).length === 1);

    await broker.pause();
    await until('offline', () => !first.connection.online);
    for (let seq = 1; seq <= 6; seq++) first.publish({ record: record(seq) });
    await first.stop(); // bounded: journaled, not delivered

    await broker.resume();
    const second = await MqttPublisher.create({ config: cfg, identity: IDENTITY, logger: silent });
    await second.start();
    second.publish({ record: record(7) });
    await until('every result', () => new Set(results(sub.got).map((r) => r.seq)).size === 8, 10_000);
    const firsts: number[] = [];
    for (const r of results(sub.got)) if (!firsts.includes(r.seq)) firsts.push(r.seq);
    expect(firsts).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(results(sub.got).filter((r) => r.seq >= 1 && r.seq <= 6).every((r) => r.historical)).toBe(true);
    // The rejects of the outage were still within their 60 s deadline: sent live, with the time left.
    const rejects = sub.got.filter((m) => m.topic === 'ast/st1/reject').map((m) => (m.body as { seq: number }).seq);
    expect(rejects).toEqual([1, 3, 5, 7]);
    await until('acknowledged', () => second.stats()?.pending === 0);
    await second.stop();
    await sub.client.endAsync();
  }, 30_000);

  it("puts the outbox's figures on /metrics: pending, drops by reason, where its writes run", async () => {
    const port = await freePort(); // nothing listens: every message stays in the outbox
    const cfg = config(mkdtempSync(join(tmpdir(), 'ast-pub-')), { url: `mqtt://127.0.0.1:${port}` });
    const publisher = await MqttPublisher.create({ config: cfg, identity: IDENTITY, logger: silent, outbox: { maxBytes: 16 * 1024 } });
    const metrics = new AgentMetrics('st1', false);
    metrics.observeOutbox(() => publisher.outboxStats());
    const scrape = async (name: string, labels = '') => {
      const line = (await metrics.registry.metrics()).split('\n').find((l) => l.startsWith(`${name}{${labels}`));
      return line === undefined ? undefined : Number(line.split(' ').at(-1));
    };
    expect(await scrape('ast_outbox_pending')).toBe(0); // not open yet
    await publisher.start();
    publisher.publish({ record: record(1) }); // a reject: result + reject
    publisher.publish({ record: record(2) });
    await until('journaled', () => publisher.outboxStats()?.pending === 3);
    expect(await scrape('ast_outbox_pending', 'station="st1"')).toBe(3);
    // Where the writes run and how many were slow: what the outbox itself says (a loaded machine may stall one).
    const now = publisher.outboxStats()!;
    expect(await scrape('ast_outbox_inline_writes')).toBe(now.inlineWrites ? 1 : 0);
    expect(await scrape('ast_outbox_slow_writes_total')).toBe(now.inlineWriteOverruns);
    expect(await scrape('ast_outbox_oldest_age_seconds')).toBeGreaterThanOrEqual(0);

    // A 16 KiB journal overflows: the oldest are dropped, and the counter follows the outbox's own count.
    for (let seq = 3; seq <= 120; seq++) publisher.publish({ record: record(seq) });
    await until('dropped for size', () => (publisher.outboxStats()?.droppedForSize ?? 0) > 0);
    const stats = publisher.outboxStats()!;
    expect(await scrape('ast_outbox_dropped_total', 'reason="size"')).toBe(stats.droppedForSize);
    expect(await scrape('ast_outbox_dropped_total', 'reason="size"')).toBe(stats.droppedForSize); // a second scrape adds nothing
    expect(await scrape('ast_outbox_bytes')).toBeLessThanOrEqual(16 * 1024 + 28 * 120);
    await publisher.stop();
  }, 30_000);
});
