/**
 * The agent as deployed: `ast-agent run --config FILE` in a child process (test/helpers/agent-process.ts),
 * a real Mosquitto (test/support/mosquitto.ts), and an MQTT 5 subscriber in the test with a persistent
 * session (clean: false + session expiry), so nothing published while the agent or the broker restarts is
 * missed by the subscriber itself.
 *
 * The delivery contract checked throughout: every part the agent inspected (it logs each result; the
 * child runs with `log.level: debug` so passes are logged too) reaches the subscriber at least once; a
 * subscriber deduplicating on `seq` sees every seq exactly once, in increasing order; a second copy of a
 * seq is only ever a `historical` replay.
 */
import { randomUUID } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { connectAsync, type IPublishPacket, type MqttClient } from 'mqtt';
import sharp from 'sharp';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  CommandResponseSchema,
  RejectMissedPayloadSchema,
  RejectPayloadSchema,
  ResultPayloadSchema,
  StatusPayloadSchema,
  type RejectMissedPayload,
  type RejectPayload,
  type ResultPayload,
  type StatusPayload,
} from '../src/config/mqtt-payloads.js';
import type { InspectionRecord } from '../src/config/result-schema.js';
import { AgentProcess, killAgentProcesses, writeAgentYaml } from './helpers/agent-process.js';
import { tempDir, writeAgentBundle, writePartFolder } from './helpers/agent-bundle.js';
import { TestBroker } from './support/mosquitto.js';
import { sleep, until, untilNotified } from './support/wait.js';

const AGENT_VERSION = (JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

// ---- a SCADA-like subscriber --------------------------------------------------------------------------

interface Received {
  topic: string;
  payload: Buffer;
  qos: number;
  retain: boolean;
  properties: IPublishPacket['properties'];
  /** Date.now() at arrival. */
  at: number;
}

class Subscriber {
  readonly got: Received[] = [];
  private readonly listeners = new Set<() => void>();

  private constructor(readonly client: MqttClient) {
    client.on('message', (topic, payload, packet) => {
      this.got.push({ topic, payload, qos: packet.qos, retain: packet.retain, properties: packet.properties, at: Date.now() });
      for (const l of [...this.listeners]) l();
    });
  }

  /** A persistent MQTT 5 session (kept 10 min by the broker) subscribed to `filters` at QoS 1, retain as published. */
  static async connect(url: string, filters: string[]): Promise<Subscriber> {
    const client = await connectAsync(url, {
      protocolVersion: 5,
      clientId: `test-sub-${randomUUID().slice(0, 8)}`,
      clean: false,
      properties: { sessionExpiryInterval: 600 },
      reconnectPeriod: 100,
      connectTimeout: 2000,
    });
    const sub = new Subscriber(client);
    await client.subscribeAsync(Object.fromEntries(filters.map((f) => [f, { qos: 1 as const, rap: true }])));
    return sub;
  }

  on(topic: string): Received[] {
    return this.got.filter((m) => m.topic === topic);
  }

  json<T = unknown>(topic: string): T[] {
    return this.on(topic).map((m) => JSON.parse(m.payload.toString('utf8')) as T);
  }

  /** Every `result` received, in arrival order, each validated against ResultPayloadSchema. */
  results(base: string): ResultPayload[] {
    return this.on(`${base}/result`).map((m, i) => {
      const parsed = ResultPayloadSchema.safeParse(JSON.parse(m.payload.toString('utf8')));
      if (!parsed.success) throw new Error(`result #${i} does not match ResultPayloadSchema: ${parsed.error.message}`);
      return parsed.data;
    });
  }

  waitFor<T>(probe: () => T | undefined | null | false, what: string, timeoutMs = 20_000): Promise<T> {
    return untilNotified(this.listeners, probe, {
      what,
      timeoutMs,
      context: () => `; got ${this.got.length} messages, last: ${this.got.slice(-3).map((m) => `${m.topic} ${m.payload.toString('utf8').slice(0, 200)}`).join(' | ')}`,
    });
  }

  /** Waits until the distinct result seqs received include all of `seqs`. */
  waitForSeqs(base: string, seqs: Iterable<number>, timeoutMs = 20_000): Promise<void> {
    const wanted = [...seqs];
    return this.waitFor(() => {
      const have = new Set(this.results(base).map((r) => r.seq));
      return wanted.every((s) => have.has(s));
    }, `results ${describeSeqs(wanted)}`, timeoutMs).then(() => undefined);
  }

  /**
   * A command request (`body` as JSON, or a raw string) answered on `cmd/<name>/response`; matched by MQTT 5
   * correlation data, so malformed requests (which cannot carry a transaction) are matched too.
   */
  async command(base: string, name: string, body: unknown, timeoutMs = 10_000): Promise<Record<string, unknown>> {
    const correlation = randomUUID();
    const from = this.got.length;
    await this.client.publishAsync(`${base}/cmd/${name}`, typeof body === 'string' ? body : JSON.stringify(body), {
      qos: 1,
      properties: { correlationData: Buffer.from(correlation) },
    });
    const answer = await this.waitFor(
      () => this.got.slice(from).find((m) => m.topic === `${base}/cmd/${name}/response` && m.properties?.correlationData?.toString() === correlation),
      `the answer to cmd/${name}`,
      timeoutMs,
    );
    const parsed = JSON.parse(answer.payload.toString('utf8')) as Record<string, unknown>;
    CommandResponseSchema.parse(parsed);
    return parsed;
  }

  /** Until `cmd/status` is answered: the agent's subscriptions (commands, trigger: one SUBSCRIBE) are in place. */
  async untilServing(base: string, timeoutMs = 20_000): Promise<Record<string, unknown>> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      try {
        return await this.command(base, 'status', {}, 1000);
      } catch (e) {
        if (Date.now() > end) throw e;
      }
    }
  }

  async close(): Promise<void> {
    await this.client.endAsync(true).catch(() => {});
  }
}

/** The retained message on `topic` as a fresh subscriber gets it (null when there is none within 2 s). */
async function readRetained(url: string, topic: string): Promise<{ body: unknown; retain: boolean } | null> {
  const client = await connectAsync(url, { protocolVersion: 5, clean: true, reconnectPeriod: 0 });
  try {
    const got = new Promise<{ body: unknown; retain: boolean } | null>((resolve) => {
      const timer = setTimeout(() => resolve(null), 2000);
      client.on('message', (t, payload, packet) => {
        if (t !== topic) return;
        clearTimeout(timer);
        resolve({ body: JSON.parse(payload.toString('utf8')), retain: packet.retain });
      });
    });
    await client.subscribeAsync(topic, { qos: 1 });
    return await got;
  } finally {
    await client.endAsync(true);
  }
}

function describeSeqs(seqs: number[]): string {
  return seqs.length <= 12 ? `[${seqs.join(', ')}]` : `[${seqs.slice(0, 5).join(', ')} … ${seqs.slice(-5).join(', ')}] (${seqs.length})`;
}

/** The record part of a result payload (without the delivery fields). */
function recordOf(p: ResultPayload): InspectionRecord {
  const { publishedAt: _p, historical: _h, ...record } = p;
  return record;
}

/**
 * The delivery contract, for everything the agent logged as inspected: each seq received (with the logged
 * record), first copies in increasing seq order, at most one live (non-historical) publish per seq, nothing
 * received that was never inspected. A further copy of a seq is either the agent's `historical` replay or
 * the very same message again (same `publishedAt`): the broker re-sending a QoS 1 message this subscriber
 * had not acknowledged when the broker went down. Returns the first copy of each seq.
 */
function checkDelivery(logged: InspectionRecord[], received: ResultPayload[]): Map<number, ResultPayload> {
  const first = new Map<number, ResultPayload>();
  const livePublishes = new Map<number, Set<string>>();
  const order: number[] = [];
  for (const r of received) {
    if (!first.has(r.seq)) {
      first.set(r.seq, r);
      order.push(r.seq);
    } else {
      const earlier = received.filter((x) => x.seq === r.seq && x !== r);
      const redelivery = earlier.some((x) => JSON.stringify(x) === JSON.stringify(r));
      expect(
        r.historical || redelivery,
        `second copy of seq ${r.seq} is neither a historical replay nor a redelivery of the same message: ${JSON.stringify(first.get(r.seq))} then ${JSON.stringify(r)}`,
      ).toBe(true);
      expect(recordOf(r)).toEqual(recordOf(first.get(r.seq)!));
    }
    if (!r.historical) livePublishes.set(r.seq, (livePublishes.get(r.seq) ?? new Set()).add(r.publishedAt));
  }
  const missing = logged.filter((l) => !first.has(l.seq)).map((l) => l.seq);
  expect(missing, `results inspected by the agent but never received: ${describeSeqs(missing)}`).toEqual([]);
  for (const l of logged) expect(recordOf(first.get(l.seq)!)).toEqual(l);
  const loggedSeqs = new Set(logged.map((l) => l.seq));
  const phantom = order.filter((s) => !loggedSeqs.has(s));
  expect(phantom, 'results received that the agent never logged').toEqual([]);
  const outOfOrder = order.filter((s, i) => i > 0 && s <= order[i - 1]!);
  expect(outOfOrder, `first copies out of seq order: ${describeSeqs(order)}`).toEqual([]);
  const doubled = [...livePublishes].filter(([, at]) => at.size > 1).map(([s]) => s);
  expect(doubled, 'seqs published live (historical: false) more than once').toEqual([]);
  return first;
}

/**
 * Fail-safe signalling, for every part with verdict reject or error: a live `reject` published before its
 * deadline (QoS 1, expiry within the deadline), or, when it could only go out after the deadline, a
 * `reject/missed` alarm. Never a live reject after its deadline; never neither.
 */
function checkRejects(sub: Subscriber, base: string, results: Iterable<ResultPayload>, deadlineMs: number): { live: number; missed: number } {
  const live = new Map<number, RejectPayload>();
  for (const m of sub.on(`${base}/reject`)) {
    const p = RejectPayloadSchema.parse(JSON.parse(m.payload.toString('utf8')));
    expect(m.qos).toBe(1);
    expect(Date.parse(p.publishedAt), `live reject ${p.seq} published after its deadline`).toBeLessThan(Date.parse(p.deadline));
    const expiry = m.properties?.messageExpiryInterval;
    if (expiry === undefined) {
      // Mosquitto forwards the remaining expiry in whole seconds and leaves the property out when that rounds
      // to 0, i.e. in the message's last second. The agent always sets it (ceil of the time left), so a copy
      // without it must have reached us no earlier than one second before its deadline.
      expect(m.at, `live reject ${p.seq} without message expiry, arriving ${Date.parse(p.deadline) - m.at} ms before its deadline`)
        .toBeGreaterThanOrEqual(Date.parse(p.deadline) - 1000 - 100);
    } else {
      expect(expiry).toBeLessThanOrEqual(Math.ceil(deadlineMs / 1000));
    }
    live.set(p.seq, p);
  }
  const missed = new Map<number, RejectMissedPayload>();
  for (const m of sub.on(`${base}/reject/missed`)) {
    const p = RejectMissedPayloadSchema.parse(JSON.parse(m.payload.toString('utf8')));
    expect(m.qos).toBe(1);
    expect(p.missedByMs).toBe(Date.parse(p.publishedAt) - Date.parse(p.deadline));
    missed.set(p.seq, p);
  }
  const silent: number[] = [];
  for (const r of results) {
    if (r.verdict === 'pass') {
      expect(live.has(r.seq) || missed.has(r.seq), `a reject for passed part ${r.seq}`).toBe(false);
      continue;
    }
    const signal = live.get(r.seq) ?? missed.get(r.seq);
    if (!signal) {
      silent.push(r.seq);
      continue;
    }
    expect(signal).toMatchObject({ verdict: r.verdict, partId: r.partId, capturedAt: r.capturedAt, station: r.station });
    expect(Date.parse(signal.deadline) - Date.parse(signal.capturedAt)).toBe(deadlineMs);
  }
  expect(silent, 'rejected or failed parts with neither a reject nor a reject/missed alarm').toEqual([]);
  return { live: live.size, missed: missed.size };
}

// ---- fixtures -------------------------------------------------------------------------------------------

let bundle: string;
/** Calibrated so that every part is rejected. */
let rejectBundle: string;
let partsDir: string;
let partNames: string[];

beforeAll(async () => {
  bundle = await writeAgentBundle(await tempDir('mqtt-bundle'), { id: 'model-a', version: '1.0.0' });
  rejectBundle = await writeAgentBundle(await tempDir('mqtt-bundle'), {
    id: 'rejects-all',
    version: '1.0.0',
    calibration: { threshold: 0.0001, goodMean: 0, goodStd: 0.01, method: 'manual', samples: 0 },
  });
  partsDir = await tempDir('mqtt-parts');
  partNames = await writePartFolder(partsDir, 6);
});

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  await killAgentProcesses();
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

interface Station {
  broker: TestBroker;
  sub: Subscriber;
  dir: string;
  stateDir: string;
  /** `<prefix>/<station>` */
  base: string;
  configFile: string;
  /** Starts the agent process on this station's config; resolves once it inspects. */
  start(): Promise<AgentProcess>;
}

type Config = Record<string, unknown>;

/** A broker, a subscriber on the station's topics (and `extraFilters`), and an agent config written as YAML. */
async function station(name: string, overrides: { source?: Config; model?: Config; mqtt?: Config; inspection?: Config } = {}, extraFilters: string[] = []): Promise<Station> {
  const broker = await TestBroker.start();
  cleanups.push(() => broker.stop());
  const dir = await tempDir(`mqtt-${name}`);
  const stateDir = join(dir, 'state');
  const base = `ast/${name}`;
  const config: Config = {
    station: name,
    source: overrides.source ?? { kind: 'test', pattern: 'ball', fps: 10 },
    model: { bundle, intraOpThreads: 1, warmupRuns: 1, ...overrides.model },
    http: { port: 0, host: '127.0.0.1' },
    stateDir,
    mqtt: { url: broker.url, metricsIntervalS: 0, ...overrides.mqtt },
    ...(overrides.inspection ? { inspection: overrides.inspection } : {}),
    log: { level: 'debug' },
  };
  const configFile = await writeAgentYaml(join(dir, 'agent.yaml'), config);
  const sub = await Subscriber.connect(broker.url, [`${base}/#`, ...extraFilters]);
  cleanups.push(() => sub.close());
  return {
    broker,
    sub,
    dir,
    stateDir,
    base,
    configFile,
    async start() {
      const agent = AgentProcess.start(configFile);
      await agent.ready();
      return agent;
    },
  };
}

/** Wall-clock time the agent logged its first broker connection. */
function connectedAt(agent: AgentProcess): number {
  return agent.messages('connected to MQTT broker')[0]!.time;
}

const isResultLine = (l: { msg: string; result?: unknown }) => l.result !== undefined && /^part \d+ /.test(l.msg);

// ---- tests --------------------------------------------------------------------------------------------

describe('agent process: availability and shutdown', () => {
  it('publishes a retained online status, and on SIGTERM delivers every result, publishes offline (shutdown) and exits 0 within 10 s', async () => {
    const s = await station('st-life');
    const agent = await s.start();
    const online = await s.sub.waitFor(() => s.sub.json<StatusPayload>(`${s.base}/status`).find((p) => p.state === 'online'), 'online status');
    StatusPayloadSchema.parse(online);
    expect(online).toMatchObject({
      state: 'online',
      station: 'st-life',
      agent: { name: 'ast-edge', version: AGENT_VERSION },
      model: { id: 'model-a', version: '1.0.0' },
      provider: 'cpu',
      protocolVersion: 5,
    });
    expect(s.sub.on(`${s.base}/status`).find((m) => m.payload.toString().includes('"online"'))!.retain).toBe(true);
    const retained = await readRetained(s.broker.url, `${s.base}/status`);
    expect(retained).toMatchObject({ retain: true, body: { state: 'online', agent: { version: AGENT_VERSION }, model: { id: 'model-a', version: '1.0.0' } } });

    await s.sub.waitFor(() => s.sub.results(s.base).length >= 10, '10 results');
    const signalledAt = performance.now();
    agent.signal('SIGTERM');
    const exit = await agent.exited;
    expect(exit, agent.tail()).toMatchObject({ code: 0, signal: null });
    expect(exit.at - signalledAt).toBeLessThan(10_000);

    const offline = await s.sub.waitFor(() => s.sub.json<StatusPayload>(`${s.base}/status`).find((p) => p.state === 'offline'), 'offline status');
    StatusPayloadSchema.parse(offline);
    expect(offline).toMatchObject({ state: 'offline', station: 'st-life', reason: 'shutdown' });
    expect(Date.parse((offline as { at: string }).at)).toBeGreaterThan(Date.now() - 20_000);
    expect(await readRetained(s.broker.url, `${s.base}/status`)).toMatchObject({ retain: true, body: { state: 'offline', reason: 'shutdown' } });

    // Everything inspected (before the signal, and parts in flight finished or failed safe after it) arrived,
    // once: the agent flushed its outbox before it said offline.
    const logged = agent.results();
    const signalLine = agent.logs.findIndex((l) => l.msg === 'stopping');
    expect(agent.logs.slice(0, signalLine).filter(isResultLine).length).toBeGreaterThanOrEqual(10);
    const received = s.sub.results(s.base);
    const first = checkDelivery(logged, received);
    expect(received).toHaveLength(logged.length);
    expect(received.filter((r) => Date.parse(r.capturedAt) > connectedAt(agent)).every((r) => !r.historical)).toBe(true);
    // (model-a scores the ball pattern above its threshold: these are rejects, each signalled live.)
    expect(checkRejects(s.sub, s.base, first.values(), 2000).missed).toBe(0);
    // One run from a fresh state folder: seqs 0, 1, 2… without a gap.
    expect(logged.map((r) => r.seq)).toEqual(logged.map((_, i) => i));
    expect(agent.messages('MQTT sink stopped with messages undelivered; they stay in the outbox')).toEqual([]);
  }, 60_000);

  it('on SIGKILL the broker publishes the last will: offline, reason connection-lost, retained', async () => {
    const s = await station('st-will');
    const agent = await s.start();
    await s.sub.waitFor(() => s.sub.json<StatusPayload>(`${s.base}/status`).find((p) => p.state === 'online'), 'online status');
    await s.sub.waitFor(() => s.sub.results(s.base).length >= 2, '2 results');
    const exit = await agent.kill();
    expect(exit.signal).toBe('SIGKILL');
    const will = await s.sub.waitFor(() => s.sub.json<StatusPayload>(`${s.base}/status`).find((p) => p.state === 'offline'), 'the last will', 10_000);
    StatusPayloadSchema.parse(will);
    expect(will).toEqual({ state: 'offline', station: 'st-will', reason: 'connection-lost' });
    expect(s.sub.on(`${s.base}/status`).at(-1)!.retain).toBe(true);
    expect(await readRetained(s.broker.url, `${s.base}/status`)).toMatchObject({ retain: true, body: { state: 'offline', reason: 'connection-lost' } });
  }, 60_000);
});

describe('agent process: results and rejects', () => {
  it('publishes one valid result per inspected part: a file source over N PNGs gives N seqs with the file names as part ids', async () => {
    const s = await station('st-files', { source: { kind: 'file', path: partsDir, loop: false, fps: 10 } });
    const agent = await s.start();
    await s.sub.waitFor(() => s.sub.results(s.base).length >= partNames.length, `${partNames.length} results`);
    // The source has ended: nothing more comes.
    await sleep(800);
    const received = s.sub.results(s.base); // each validated against ResultPayloadSchema
    expect(received).toHaveLength(partNames.length);
    expect(new Set(received.map((r) => r.seq)).size).toBe(partNames.length);
    expect(received.map((r) => r.partId)).toEqual(partNames);
    const seqs = received.map((r) => r.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    for (const r of received) {
      expect(r).toMatchObject({ station: 'st-files', model: { id: 'model-a', version: '1.0.0' } });
      // A part judged before the first CONNACK is journaled before the connection came up: historical by definition.
      if (Date.parse(r.capturedAt) > connectedAt(agent)) expect(r.historical).toBe(false);
      expect(r.verdict).not.toBe('error');
      expect(r.score).toBeGreaterThan(0);
    }
    expect(s.sub.on(`${s.base}/result`).every((m) => m.qos === 1 && !m.retain)).toBe(true);
    await agent.stop();
    checkDelivery(agent.results(), s.sub.results(s.base));
  }, 60_000);

  it('sends each reject at QoS 1 with MQTT 5 message expiry no longer than the time left to its deadline', async () => {
    const deadlineMs = 5000;
    const s = await station('st-reject', { model: { bundle: rejectBundle }, inspection: { deadlineMs } });
    const agent = await s.start();
    await s.sub.waitFor(() => s.sub.on(`${s.base}/reject`).length >= 5, '5 rejects');
    await agent.stop();
    const results = checkDelivery(agent.results(), s.sub.results(s.base));
    expect([...results.values()].every((r) => r.verdict === 'reject')).toBe(true);

    const rejects = s.sub.on(`${s.base}/reject`);
    const bySeq = new Map<number, RejectPayload>();
    for (const m of rejects) {
      const body = RejectPayloadSchema.parse(JSON.parse(m.payload.toString('utf8')));
      expect(m.qos).toBe(1);
      expect(m.retain).toBe(false);
      const expiry = m.properties?.messageExpiryInterval;
      expect(expiry, `reject ${body.seq} has no message expiry`).toBeDefined();
      expect(expiry!).toBeGreaterThanOrEqual(1);
      expect(expiry!).toBeLessThanOrEqual(Math.ceil(deadlineMs / 1000));
      // Published right after the verdict (ms), so about the whole deadline was left.
      expect(expiry!).toBeGreaterThanOrEqual(Math.ceil(deadlineMs / 1000) - 1);
      expect(Date.parse(body.deadline) - Date.parse(body.capturedAt)).toBe(deadlineMs);
      expect(Date.parse(body.publishedAt)).toBeLessThan(Date.parse(body.deadline));
      expect(body.verdict).toBe('reject');
      expect(body.reason).toMatch(/score .* at or above threshold/);
      bySeq.set(body.seq, body);
    }
    // Every rejected part has its reject, with the result's part id and capture time.
    for (const r of results.values()) {
      expect(bySeq.get(r.seq), `no reject for seq ${r.seq}`).toMatchObject({ partId: r.partId, capturedAt: r.capturedAt, station: r.station });
    }
    expect(s.sub.on(`${s.base}/reject/missed`)).toEqual([]);
    checkRejects(s.sub, s.base, results.values(), deadlineMs);
  }, 60_000);

  it('fails every part safe when the deadline is missed: verdict error, and a reject or a reject/missed alarm for each', async () => {
    const s = await station('st-deadline', { source: { kind: 'test', pattern: 'ball', fps: 5 }, inspection: { deadlineMs: 1 } });
    const agent = await s.start();
    await s.sub.waitFor(() => s.sub.results(s.base).length >= 4, '4 results');
    await agent.stop();
    const results = checkDelivery(agent.results(), s.sub.results(s.base));
    expect(results.size).toBeGreaterThanOrEqual(4);
    for (const r of results.values()) {
      expect(r.verdict).toBe('error');
      expect(r.score).toBeNull();
      expect(r.reason).toMatch(/deadline of 1 ms missed|agent shut down before the part was scored/);
    }
    // A defective (or unjudged) part never passes silently: each one is on reject or, too late for a kick, on the alarm.
    const { live, missed } = checkRejects(s.sub, s.base, results.values(), 1);
    expect(live + missed).toBeGreaterThanOrEqual(results.size);
  }, 60_000);
});

describe('agent process: commands', () => {
  it('set-threshold (persisted across a restart), refusals that change nothing, capture, status and reload', async () => {
    const s = await station('st-cmd');
    let agent = await s.start();
    const status = await s.sub.untilServing(s.base);
    expect(status).toMatchObject({
      ok: true,
      state: 'online',
      model: { id: 'model-a', version: '1.0.0' },
      health: { status: expect.stringMatching(/^(ok|degraded)$/), station: 'st-cmd', model: { id: 'model-a', version: '1.0.0', provider: 'cpu' } },
    });
    expect(status.commands).toEqual(expect.arrayContaining(['capture', 'reload', 'set-threshold', 'status']));

    // The calibrated threshold (1, good std 0.25) first.
    await agent.waitForResults(2);
    expect(agent.results().every((r) => r.threshold === 1)).toBe(true);

    const set = await s.sub.command(s.base, 'set-threshold', { normalized: 0.7, transaction: 't1' });
    const raw = 1 + 0.25 * Math.log(0.7 / 0.3);
    expect(set).toMatchObject({ ok: true, transaction: 't1' });
    expect(set.threshold as number).toBeCloseTo(raw, 9);
    expect(set.normalized as number).toBeCloseTo(0.7, 9);
    // (The log line and the MQTT answer travel separately: the line may come in after the answer.)
    const changed = await agent.waitForLog((l) => l.msg === 'threshold changed by command', 'the threshold change logged', 5000);
    const changedAt = agent.logs.indexOf(changed);
    const settingsFile = join(s.stateDir, 'settings.json');
    const settings = await readFile(settingsFile, 'utf8');
    expect(JSON.parse(settings)).toEqual({ threshold: { normalized: 0.7 } });
    // Results judged after the change carry the new raw threshold (and are published with it).
    await agent.waitFor(() => agent.logs.slice(changedAt).filter(isResultLine).length >= 3, '3 results after the change');
    const after = agent.logs.slice(changedAt).filter(isResultLine).map((l) => l.result as InspectionRecord);
    for (const r of after) expect(r.threshold).toBeCloseTo(raw, 9);
    await s.sub.waitForSeqs(s.base, after.map((r) => r.seq));
    for (const r of s.sub.results(s.base).filter((p) => after.some((a) => a.seq === p.seq))) expect(r.threshold).toBeCloseTo(raw, 9);

    // Refusals: each answered ok: false naming the problem; nothing changes.
    const malformed = await s.sub.command(s.base, 'set-threshold', '{"normalized": ');
    expect(malformed).toMatchObject({ ok: false, error: expect.stringMatching(/malformed JSON/) });
    const outOfRange = await s.sub.command(s.base, 'set-threshold', { normalized: 2, transaction: 'b2' });
    expect(outOfRange).toMatchObject({ ok: false, transaction: 'b2', error: expect.stringMatching(/^invalid request: normalized: /) });
    const unknown = await s.sub.command(s.base, 'nope', { transaction: 'b3' });
    expect(unknown).toMatchObject({ ok: false, transaction: 'b3', error: expect.stringMatching(/unknown command "nope"/) });
    const both = await s.sub.command(s.base, 'set-threshold', { normalized: 0.5, raw: 1, transaction: 'b4' });
    expect(both).toMatchObject({ ok: false, transaction: 'b4', error: expect.stringMatching(/exactly one of normalized or raw/) });
    expect(await readFile(settingsFile, 'utf8')).toBe(settings);
    expect(agent.messages('threshold changed by command')).toHaveLength(1);
    const refusedAt = agent.logs.length;
    await agent.waitFor(() => agent.logs.slice(refusedAt).filter(isResultLine).length >= 2, '2 results after the refusals');
    for (const l of agent.logs.slice(refusedAt).filter(isResultLine)) expect((l.result as InspectionRecord).threshold).toBeCloseTo(raw, 9);

    // capture: the next 2 inspected frames as PNGs under <stateDir>/captures/.
    const capture = await s.sub.command(s.base, 'capture', { count: 2, onlyPass: false, transaction: 'c1' });
    expect(capture).toMatchObject({ ok: true, transaction: 'c1', count: 2 });
    const folder = capture.folder as string;
    expect(folder.startsWith(join(s.stateDir, 'captures') + '/')).toBe(true);
    const listPngs = () => readdirSync(folder).filter((f) => f.endsWith('.png'));
    const pngs = await until('2 captured PNGs', () => listPngs().length >= 2 && listPngs(), 10_000);
    await sleep(300);
    expect(listPngs()).toHaveLength(2);
    for (const f of pngs) expect(await sharp(join(folder, f)).metadata()).toMatchObject({ format: 'png', width: 64, height: 64 });

    // reload: the bundle again, swapped in; the saved (normalised) threshold still applies.
    const reload = await s.sub.command(s.base, 'reload', { transaction: 'r1' }, 60_000);
    expect(reload).toMatchObject({ ok: true, transaction: 'r1', model: { id: 'model-a', version: '1.0.0' } });
    const reloadedAt = agent.logs.indexOf(await agent.waitForLog((l) => l.msg === 'model swapped', 'the swap logged', 5000));
    await agent.waitFor(() => agent.logs.slice(reloadedAt).filter(isResultLine).length >= 2, '2 results after the reload');
    for (const l of agent.logs.slice(reloadedAt).filter(isResultLine)) expect((l.result as InspectionRecord).threshold).toBeCloseTo(raw, 9);
    expect(await s.sub.command(s.base, 'status', {})).toMatchObject({ ok: true, health: { model: { id: 'model-a' } } });

    // The threshold survives a restart (settings.json in the state folder).
    expect(await agent.stop()).toMatchObject({ code: 0 });
    agent = await s.start();
    expect(agent.messages(/run-time settings ignored/)).toEqual([]);
    const restarted = await agent.waitForResults(3);
    for (const r of restarted) expect(r.threshold).toBeCloseTo(raw, 9);
    await agent.stop();
  }, 90_000);

  it('external trigger: a part-present message gives a result for that part; malformed ones are ignored and logged', async () => {
    const s = await station('st-trig', { source: { kind: 'test', pattern: 'ball', fps: 20 }, inspection: { trigger: { mode: 'external', maxWaitMs: 500 } } });
    const agent = await s.start();
    await s.sub.untilServing(s.base);
    const trigger = `${s.base}/trigger`;
    await s.sub.client.publishAsync(trigger, JSON.stringify({ partId: 'A-1' }), { qos: 1 });
    const first = await s.sub.waitFor(() => s.sub.results(s.base).find((r) => r.partId === 'A-1'), 'the result of A-1', 10_000);
    expect(first.verdict).not.toBe('error');

    const from = agent.logs.length;
    await s.sub.client.publishAsync(trigger, 'not json', { qos: 1 });
    await s.sub.client.publishAsync(trigger, JSON.stringify({ partId: 5 }), { qos: 1 });
    await s.sub.client.publishAsync(trigger, JSON.stringify({}), { qos: 1 });
    await s.sub.client.publishAsync(trigger, JSON.stringify({ partId: 'A-2', extra: true }), { qos: 1 });
    await agent.waitFor(() => agent.logs.slice(from).filter((l) => l.msg === 'trigger payload refused').length >= 3, '3 refused triggers', 10_000);
    expect(agent.logs.slice(from).filter((l) => l.msg === 'trigger payload is not JSON; ignored')).toHaveLength(1);
    expect(agent.logs.slice(from).find((l) => l.msg === 'trigger payload refused')!.level).toBe(40);

    // Still running and still serving triggers.
    await s.sub.client.publishAsync(trigger, JSON.stringify({ partId: 'A-3' }), { qos: 1 });
    const third = await s.sub.waitFor(() => s.sub.results(s.base).find((r) => r.partId === 'A-3'), 'the result of A-3', 10_000);
    expect(third.verdict).not.toBe('error');
    await sleep(300);
    expect(agent.running).toBe(true);
    await agent.stop();
    // One result per accepted trigger and nothing else (external mode inspects only triggered parts).
    expect(s.sub.results(s.base).map((r) => r.partId)).toEqual(['A-1', 'A-3']);
    checkDelivery(agent.results(), s.sub.results(s.base));
  }, 60_000);
});

describe('agent process: outages and crashes', () => {
  it('broker down for a few seconds: nothing lost, order kept, results from the outage replayed as historical', async () => {
    const s = await station('st-outage');
    const agent = await s.start();
    await s.sub.waitFor(() => s.sub.results(s.base).length >= 5, '5 results');
    await s.broker.pause();
    const pausedAt = Date.now();
    await sleep(3000);
    const resumedAt = Date.now();
    const duringOutage = agent.results().filter((r) => Date.parse(r.capturedAt) > pausedAt).map((r) => r.seq);
    expect(duringOutage.length).toBeGreaterThanOrEqual(15);
    await s.broker.resume();
    // The agent reconnects (backoff) and says online again.
    const statusCount = s.sub.on(`${s.base}/status`).length;
    await s.sub.waitFor(() => s.sub.on(`${s.base}/status`).slice(statusCount).some((m) => m.payload.toString().includes('"online"')), 'online again', 30_000);
    await s.sub.waitForSeqs(s.base, duringOutage, 20_000);
    // A few live ones after the replay.
    const lastOutageSeq = duringOutage.at(-1)!;
    await s.sub.waitFor(() => s.sub.results(s.base).filter((r) => r.seq > lastOutageSeq && !r.historical).length >= 3, '3 live results after the replay', 20_000);
    await agent.stop();

    const first = checkDelivery(agent.results(), s.sub.results(s.base));
    for (const seq of duringOutage) expect(first.get(seq)!.historical, `seq ${seq} (captured during the outage) not historical`).toBe(true);
    const capturedDuring = [...first.values()].filter((r) => Date.parse(r.capturedAt) > pausedAt && Date.parse(r.capturedAt) < resumedAt);
    expect(capturedDuring.every((r) => r.historical)).toBe(true);
    // Replays were published after the reconnect.
    for (const seq of duringOutage) expect(Date.parse(first.get(seq)!.publishedAt)).toBeGreaterThanOrEqual(resumedAt);
    // Rejects of the outage: those whose deadline passed before the agent was back are alarms on reject/missed,
    // never live rejects; those still within their deadline when replayed go out live.
    checkRejects(s.sub, s.base, first.values(), 2000);
    const reconnectedAt = agent.messages('connected to MQTT broker')[1]!.time;
    const missed = new Set(s.sub.json<RejectMissedPayload>(`${s.base}/reject/missed`).map((p) => p.seq));
    const live = new Set(s.sub.json<RejectPayload>(`${s.base}/reject`).map((p) => p.seq));
    const outageRejects = duringOutage.map((seq) => first.get(seq)!).filter((r) => r.verdict !== 'pass');
    const expired = outageRejects.filter((r) => Date.parse(r.capturedAt) + 2000 < reconnectedAt);
    expect(expired.length).toBeGreaterThan(0);
    for (const r of expired) expect(missed.has(r.seq) && !live.has(r.seq), `reject ${r.seq} expired before the reconnect`).toBe(true);
    for (const r of outageRejects.filter((x) => Date.parse(x.capturedAt) + 2000 > reconnectedAt + 500)) {
      expect(live.has(r.seq), `reject ${r.seq} was still within its deadline after the reconnect`).toBe(true);
    }
  }, 90_000);

  it('agent SIGKILLed mid-run and restarted on the same state folder, with the broker up and then down: nothing lost', async () => {
    // 4 fps: a kill 100 ms after a verdict comes after its journal write (a few ms; tens under load) and
    // 150 ms before the next frame. (A kill between a verdict and its fdatasync loses that result: the
    // log line is written first. That window is the journal's commit time and is not what this tests.)
    const s = await station('st-crash', { source: { kind: 'test', pattern: 'ball', fps: 4 } });
    const logged: InspectionRecord[] = [];
    const killMidRun = async (agent: AgentProcess) => {
      await agent.waitForLog(isResultLine, 'a result', 10_000, agent.logs.length);
      await sleep(100);
      const exit = await agent.kill();
      expect(exit.signal).toBe('SIGKILL');
      logged.push(...agent.results());
    };

    // 1. Broker up: killed with results possibly between PUBLISH and PUBACK.
    const a = await s.start();
    await s.sub.waitFor(() => s.sub.results(s.base).length >= 3, '3 results');
    await killMidRun(a);
    const b = await s.start();
    await b.waitForResults(2);
    // 2. Broker down: B journals, is killed, C starts while the broker is still down.
    await s.broker.pause();
    await sleep(1500);
    const journaledByB = b.results().length;
    await killMidRun(b);
    expect(b.results().length).toBeGreaterThan(journaledByB);
    const c = AgentProcess.start(s.configFile);
    await c.ready();
    await c.waitForResults(3);
    await s.broker.resume();
    await s.sub.waitForSeqs(s.base, [...logged, ...c.results()].map((r) => r.seq), 30_000);
    await c.stop();
    logged.push(...c.results());

    // Seqs never repeat across crashes (a block is reserved on disk before use).
    const runs = [a, b, c].map((p) => p.results().map((r) => r.seq));
    expect(Math.min(...runs[1]!)).toBeGreaterThan(Math.max(...runs[0]!));
    expect(Math.min(...runs[2]!)).toBeGreaterThan(Math.max(...runs[1]!));
    const first = checkDelivery(logged, s.sub.results(s.base));
    // What B journaled while the broker was down reached the subscriber only through C's replay.
    const bDuringOutage = b.results().slice(journaledByB);
    for (const r of bDuringOutage) expect(first.get(r.seq)!.historical).toBe(true);
    expect(c.messages('replaying messages the outbox kept from before').length).toBe(1);
    checkRejects(s.sub, s.base, first.values(), 2000);
  }, 120_000);

  it('SIGTERM while the broker is down: exits 0 within 10 s keeping the undelivered results, which the next run delivers', async () => {
    const s = await station('st-down-stop');
    const first = await s.start();
    await s.sub.waitFor(() => s.sub.results(s.base).length >= 3, '3 results');
    await s.broker.pause();
    await sleep(1000);
    const signalledAt = performance.now();
    first.signal('SIGTERM');
    const exit = await first.exited;
    expect(exit, first.tail()).toMatchObject({ code: 0, signal: null });
    expect(exit.at - signalledAt).toBeLessThan(10_000);
    const undelivered = first.results().filter((r) => !s.sub.results(s.base).some((p) => p.seq === r.seq));
    expect(undelivered.length).toBeGreaterThanOrEqual(5);

    await s.broker.resume();
    // No stale `online`: Mosquitto published the agent's will when it shut down (the agent could not say offline).
    expect(await readRetained(s.broker.url, `${s.base}/status`)).toMatchObject({ retain: true, body: { state: 'offline' } });
    const second = await s.start();
    await s.sub.waitForSeqs(s.base, undelivered.map((r) => r.seq), 20_000);
    await second.waitForResults(3);
    await second.stop();
    await s.sub.waitForSeqs(s.base, second.results().map((r) => r.seq), 10_000);
    const delivered = checkDelivery([...first.results(), ...second.results()], s.sub.results(s.base));
    for (const r of undelivered) expect(delivered.get(r.seq)!.historical).toBe(true);
    checkRejects(s.sub, s.base, delivered.values(), 2000);
    expect(await readRetained(s.broker.url, `${s.base}/status`)).toMatchObject({ body: { state: 'offline', reason: 'shutdown' } });
  }, 90_000);
});

describe('agent process: Sparkplug B', () => {
  const tahu = createRequire(import.meta.url)('sparkplug-payload').get('spBv1.0') as {
    decodePayload(bytes: Uint8Array): { seq?: unknown; metrics?: { name?: string; alias?: unknown; value: unknown }[] };
  };
  const num = (v: unknown) => Number(String(v));

  it('publishes NBIRTH and DBIRTH on spBv1.0/plant/..., one DDATA per result, and DDEATH/NDEATH on stop', async () => {
    const s = await station('st-spb', { mqtt: { sparkplug: { groupId: 'plant' } } }, ['spBv1.0/plant/#']);
    const agent = await s.start();
    const nbirthTopic = 'spBv1.0/plant/NBIRTH/st-spb';
    const dbirthTopic = 'spBv1.0/plant/DBIRTH/st-spb/camera';
    const ddataTopic = 'spBv1.0/plant/DDATA/st-spb/camera';
    await s.sub.waitFor(() => s.sub.on(dbirthTopic).length > 0, 'DBIRTH');
    await s.sub.waitFor(() => s.sub.on(ddataTopic).length >= 5, '5 DDATA');
    await agent.stop();

    const nbirth = tahu.decodePayload(s.sub.on(nbirthTopic)[0]!.payload);
    const nodeMetrics = new Map(nbirth.metrics!.map((m) => [m.name!, m.value]));
    expect(num(nbirth.seq)).toBe(0);
    expect(nodeMetrics.get('Properties/Software Version')).toBe(AGENT_VERSION);
    expect(nodeMetrics.get('Model/Id')).toBe('model-a');
    expect(nodeMetrics.get('Model/Version')).toBe('1.0.0');
    expect(nodeMetrics.has('bdSeq')).toBe(true);
    const dbirth = tahu.decodePayload(s.sub.on(dbirthTopic)[0]!.payload);
    expect(num(dbirth.seq)).toBe(1);
    const names = new Map(dbirth.metrics!.map((m) => [num(m.alias), m.name!]));
    expect(names.get(10)).toBe('Inspection/Seq');
    expect([...names.values()]).toEqual(expect.arrayContaining(['Inspection/Verdict', 'Inspection/Score', 'Inspection/Part Id', 'Config/Threshold']));

    // DDATA by alias: one per result, each the result with the same seq.
    const ddata = s.sub.on(ddataTopic).map((m) => tahu.decodePayload(m.payload));
    const perResult = ddata.filter((d) => d.metrics!.some((m) => num(m.alias) === 10));
    const results = checkDelivery(agent.results(), s.sub.results(s.base));
    const spbSeqs = perResult.map((d) => num(d.metrics!.find((m) => num(m.alias) === 10)!.value));
    expect(new Set(spbSeqs).size).toBe(spbSeqs.length);
    // Every result from the first DDATA on (the node was born then and stayed connected).
    const expected = [...results.keys()].filter((seq) => seq >= spbSeqs[0]!);
    expect(spbSeqs).toEqual(expected);
    for (const d of perResult) {
      const byAlias = new Map(d.metrics!.map((m) => [names.get(num(m.alias)), m.value]));
      const r = results.get(num(byAlias.get('Inspection/Seq')))!;
      expect(byAlias.get('Inspection/Verdict')).toBe(r.verdict);
      expect(byAlias.get('Inspection/Score') as number).toBeCloseTo(r.score!, 9);
    }
    // Sparkplug message seq: NBIRTH 0, DBIRTH 1, then +1 per message (mod 256).
    const messageSeqs = ddata.map((d) => num(d.seq));
    expect(messageSeqs.every((q, i) => q === (2 + i) % 256)).toBe(true);
    // Clean stop: DDEATH, then NDEATH with the birth's bdSeq.
    await s.sub.waitFor(() => s.sub.on('spBv1.0/plant/NDEATH/st-spb').length > 0, 'NDEATH', 5000);
    expect(s.sub.on('spBv1.0/plant/DDEATH/st-spb/camera')).toHaveLength(1);
    const ndeath = s.sub.on('spBv1.0/plant/NDEATH/st-spb');
    expect(ndeath).toHaveLength(1);
    const death = tahu.decodePayload(ndeath[0]!.payload);
    expect(num(death.metrics!.find((m) => m.name === 'bdSeq')!.value)).toBe(num(nodeMetrics.get('bdSeq')));
  }, 60_000);
});
