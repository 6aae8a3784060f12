/**
 * The Sparkplug B edge node against a real Mosquitto broker, checked from the outside: a host-like MQTT
 * client sees every message, and everything is decoded with `sparkplug-payload` (Eclipse Tahu's
 * JavaScript decoder), independent of our own schema and codec.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { connectAsync, type IPublishPacket, type MqttClient } from 'mqtt';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AgentMetrics } from '../src/agent/agent-metrics.js';
import type { InspectionRecord } from '../src/config/result-schema.js';
import type { InspectionOutcome } from '../src/publish/result-sink.js';
import { DataType, SeqCounter, decodePayload, encodePayload, metric } from '../src/publish/sparkplug/payload.js';
import { BdSeqStore, nextBdSeq } from '../src/publish/sparkplug/bdseq-store.js';
import { SparkplugNode, type SparkplugNodeOptions } from '../src/publish/sparkplug/sparkplug-node.js';
import { TestBroker } from './support/mosquitto.js';
import { until, untilNotified } from './support/wait.js';

// ---- the independent decoder ------------------------------------------------------------------------------

interface TahuMetric {
  name?: string;
  isHistorical?: boolean;
  alias?: unknown;
  timestamp?: unknown;
  type: string;
  value: unknown;
  properties?: Record<string, { type: string; value: unknown }>;
}
interface TahuPayload {
  timestamp?: unknown;
  seq?: unknown;
  metrics?: TahuMetric[];
}
const tahu = createRequire(import.meta.url)('sparkplug-payload').get('spBv1.0') as {
  decodePayload(bytes: Uint8Array): TahuPayload;
  encodePayload(payload: object): Uint8Array;
};

/** A Long (or number) from the Tahu decoder as an unsigned bigint. */
function u64(v: unknown): bigint {
  return BigInt.asUintN(64, BigInt(String(v)));
}
const i64 = (v: unknown): bigint => BigInt.asIntN(64, u64(v));

// ---- a host-like observer ---------------------------------------------------------------------------------

interface Seen {
  topic: string;
  qos: number;
  retain: boolean;
  /** Decoded by sparkplug-payload; null for STATE (JSON) and anything else that does not decode. */
  payload: TahuPayload | null;
}

class Observer {
  readonly seen: Seen[] = [];
  private readonly listeners = new Set<() => void>();

  private constructor(readonly client: MqttClient) {
    client.on('message', (topic, bytes, packet: IPublishPacket) => {
      let payload: TahuPayload | null = null;
      try {
        if (!topic.includes('/STATE/')) payload = tahu.decodePayload(bytes);
      } catch {
        // Not a Sparkplug payload: kept with payload null.
      }
      this.seen.push({ topic, qos: packet.qos, retain: packet.retain, payload });
      for (const l of this.listeners) l();
    });
  }

  /** `sessionId`: a persistent session, so what is published while the observer reconnects is kept for it. */
  static async connect(url: string, filter: string, sessionId?: string): Promise<Observer> {
    const client = await connectAsync(url, {
      protocolVersion: 5,
      reconnectPeriod: 50,
      ...(sessionId ? { clientId: sessionId, clean: false, properties: { sessionExpiryInterval: 60 } } : { clean: true }),
    });
    const observer = new Observer(client);
    // Retain-as-published: the retain flag seen is the publisher's. No-local: this host's own commands are not observed.
    await client.subscribeAsync(filter, { qos: 1, rap: true, nl: true });
    return observer;
  }

  /** The first message from index `from` on that satisfies `pred`. */
  waitFor(pred: (s: Seen, index: number) => boolean, from = 0, timeoutMs = 5000): Promise<Seen & { index: number }> {
    const found = () => {
      for (let i = from; i < this.seen.length; i++) if (pred(this.seen[i]!, i)) return { ...this.seen[i]!, index: i };
      return undefined;
    };
    return untilNotified(this.listeners, found, {
      what: 'a matching Sparkplug message',
      timeoutMs,
      context: () => `; seen: ${this.seen.slice(from).map((s) => s.topic).join(', ')}`,
    });
  }

  of(topic: string, from = 0): Seen[] {
    return this.seen.slice(from).filter((s) => s.topic === topic);
  }

  async close(): Promise<void> {
    await this.client.endAsync();
  }
}

// ---- fixtures ---------------------------------------------------------------------------------------------

function captureLogs() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _enc, done) {
      lines.push(JSON.parse(chunk.toString()));
      done();
    },
  });
  return { logger: pino({ level: 'info' }, stream), lines };
}

const BASE_TIME = Date.parse('2025-03-01T08:00:00.000Z');

function result(i: number, model = { id: 'ast-bottle', version: '1' }): InspectionOutcome {
  const failed = i % 17 === 5;
  const score = failed ? null : 0.25 + (i % 13) * 0.125;
  const record: InspectionRecord = {
    seq: 1000 + i,
    station: 'station-1',
    partId: i % 10 === 3 ? null : `P-${i}`,
    capturedAt: new Date(BASE_TIME + i * 40).toISOString(),
    score,
    normalizedScore: score === null ? null : score / 2,
    threshold: failed ? null : 1.5,
    verdict: failed ? 'error' : score! > 1.5 ? 'reject' : 'pass',
    ...(failed ? { reason: 'deadline missed' } : {}),
    latencyMs: 12.5 + (i % 7),
    model,
  };
  return { record };
}

const byName = (p: TahuPayload | null, name: string): TahuMetric | undefined => p?.metrics?.find((m) => m.name === name);
const seqOf = (s: Seen): number => Number(u64(s.payload!.seq));

let broker: TestBroker;
let dir: string;
const nodes: SparkplugNode[] = [];
const observers: Observer[] = [];
const children: ChildProcess[] = [];

beforeAll(async () => {
  // QoS 0 messages (all but NDEATH) are kept for a persistent observer session across a broker restart.
  broker = await TestBroker.start(['queue_qos0_messages true']);
  dir = await mkdtemp(join(tmpdir(), 'ast-sparkplug-'));
});

afterEach(async () => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
  await Promise.all(nodes.splice(0).map((n) => n.stop()));
  await Promise.all(observers.splice(0).map((o) => o.close()));
});

afterAll(async () => {
  await broker?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function observe(groupId: string, sessionId?: string): Promise<Observer> {
  const o = await Observer.connect(broker.url, `spBv1.0/${groupId}/#`, sessionId);
  observers.push(o);
  return o;
}

function makeNode(options: Partial<SparkplugNodeOptions> & Pick<SparkplugNodeOptions, 'groupId' | 'edgeNodeId'>): SparkplugNode {
  const node = new SparkplugNode({
    url: broker.url,
    stateFile: join(dir, `${options.groupId}-${options.edgeNodeId}.json`),
    softwareVersion: '0.1.0',
    model: { id: 'ast-bottle', version: '1' },
    logger: pino({ level: 'silent' }),
    reconnectMs: 200,
    ...options,
  });
  nodes.push(node);
  return node;
}

/** The node run in its own process, so the test can SIGKILL it (no DISCONNECT, no goodbye). */
function spawnNode(options: { groupId: string; edgeNodeId: string; stateFile: string }): ChildProcess {
  const nodeModule = pathToFileURL(fileURLToPath(new URL('../src/publish/sparkplug/sparkplug-node.ts', import.meta.url))).href;
  const code = [
    "import pino from 'pino';",
    `import { SparkplugNode } from ${JSON.stringify(nodeModule)};`,
    'const options = JSON.parse(process.env.SPB_OPTIONS);',
    "const node = new SparkplugNode({ ...options, softwareVersion: '0.1.0', logger: pino({ level: 'silent' }) });",
    'await node.start();',
  ].join('\n');
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: fileURLToPath(new URL('..', import.meta.url)),
    env: { ...process.env, SPB_OPTIONS: JSON.stringify({ url: broker.url, ...options }) },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  children.push(child);
  return child;
}

const TOPIC = /^spBv1\.0\/[^/+#]+\/(?:(?:NBIRTH|NDATA|NDEATH|NCMD)\/[^/+#]+|(?:DBIRTH|DDATA|DDEATH|DCMD)\/[^/+#]+\/[^/+#]+)$/;

// ---- payload codec ----------------------------------------------------------------------------------------

describe('Sparkplug B payload codec', () => {
  it('encodes every scalar type so that the Tahu decoder reads the same values', () => {
    const bytes = encodePayload({
      timestamp: 1_700_000_000_123n,
      seq: 255,
      metrics: [
        metric.int32('i32', -123_456, { alias: 1 }),
        metric.int64('i64', -(2n ** 62n) - 5n, { alias: 2n }),
        metric.uint64('u64', 2n ** 64n - 1n),
        metric.float('f', 0.7),
        metric.double('d', Math.PI),
        metric.boolean('b', true),
        metric.string('s', 'Prüfung ✓'),
        metric.dateTime('t', new Date(BASE_TIME)),
        metric.double('missing', null),
        { name: 'i8', datatype: DataType.Int8, value: -1 },
        { name: 'u32', datatype: DataType.UInt32, value: 0xffff_fffe },
      ],
    });
    const p = tahu.decodePayload(bytes);
    expect(u64(p.timestamp)).toBe(1_700_000_000_123n);
    expect(u64(p.seq)).toBe(255n);
    const m = (name: string) => p.metrics!.find((x) => x.name === name)!;
    expect(m('i32')).toMatchObject({ type: 'Int32', value: -123_456 });
    expect(u64(m('i32').alias)).toBe(1n);
    expect(m('i64').type).toBe('Int64');
    expect(i64(m('i64').value)).toBe(-(2n ** 62n) - 5n);
    expect(u64(m('u64').value)).toBe(2n ** 64n - 1n);
    expect(m('f').value).toBeCloseTo(0.7, 6);
    expect(m('d').value).toBe(Math.PI);
    expect(m('b').value).toBe(true);
    expect(m('s').value).toBe('Prüfung ✓');
    expect(m('t').type).toBe('DateTime');
    expect(u64(m('t').value)).toBe(BigInt(BASE_TIME));
    expect(m('missing')).toMatchObject({ type: 'Double', value: null });
    expect(m('i8').value).toBe(-1);
    expect(u64(m('u32').value)).toBe(0xffff_fffen);
  });

  it('decodes what the Tahu encoder writes, 64-bit values as bigint', () => {
    const bytes = tahu.encodePayload({
      timestamp: 42,
      seq: 7,
      metrics: [
        { name: 'Node Control/Rebirth', type: 'Boolean', value: true },
        { alias: 21, type: 'Float', value: 0.25 },
        { name: 'neg', type: 'Int64', value: -3 },
        { name: 'i16', type: 'Int16', value: -300 },
        { name: 'nothing', type: 'String', value: null },
      ],
    });
    const p = decodePayload(bytes);
    expect(p.timestamp).toBe(42n);
    expect(p.seq).toBe(7);
    expect(p.metrics).toEqual([
      { name: 'Node Control/Rebirth', datatype: DataType.Boolean, value: true },
      { alias: 21n, datatype: DataType.Float, value: 0.25 },
      { name: 'neg', datatype: DataType.Int64, value: -3n },
      { name: 'i16', datatype: DataType.Int16, value: -300 },
      { name: 'nothing', datatype: DataType.String, value: null },
    ]);
    // Our own round trip keeps the extremes.
    const back = decodePayload(encodePayload({ metrics: [metric.int64('min', -(2n ** 63n)), metric.uint64('max', 2n ** 64n - 1n)] }));
    expect(back.metrics.map((x) => x.value)).toEqual([-(2n ** 63n), 2n ** 64n - 1n]);
  });

  it('refuses values that do not fit their datatype', () => {
    expect(() => encodePayload({ metrics: [metric.int32('x', 2 ** 31)] })).toThrow(RangeError);
    expect(() => encodePayload({ metrics: [metric.uint64('x', -1)] })).toThrow(RangeError);
    expect(() => encodePayload({ metrics: [metric.int64('x', 0.5)] })).toThrow(TypeError);
    expect(() => encodePayload({ metrics: [{ name: 'x', datatype: DataType.Double, value: 'one' }] })).toThrow(TypeError);
    expect(() => encodePayload({ metrics: [], seq: 256 })).toThrow(RangeError);
  });

  it('numbers messages 0..255 and wraps', () => {
    const seq = new SeqCounter();
    const taken = Array.from({ length: 600 }, () => seq.take());
    expect(taken.slice(0, 3)).toEqual([0, 1, 2]);
    expect(taken.slice(254, 258)).toEqual([254, 255, 0, 1]);
    seq.reset();
    expect(seq.take()).toBe(0);
  });
});

describe('bdSeq state file', () => {
  it('starts at 0, keeps the last value, wraps after 255 and refuses a file that is not its own', async () => {
    const store = new BdSeqStore(join(dir, 'store', 'nested', 'bdseq.json'));
    expect(await store.read()).toBeNull();
    expect(nextBdSeq(null)).toBe(0);
    await Promise.all([store.write(3), store.write(4), store.write(5)]);
    expect(await store.read()).toBe(5);
    expect(nextBdSeq(5)).toBe(6);
    expect(nextBdSeq(255)).toBe(0);
    await writeFile(store.file, '{"bdSeq": 300}');
    await expect(store.read()).rejects.toThrow(/0\.\.255/);
    await writeFile(store.file, 'garbage');
    await expect(store.read()).rejects.toThrow(/not JSON/);
  });
});

// ---- the edge node ----------------------------------------------------------------------------------------

describe('Sparkplug B edge node', () => {
  it('births with bdSeq, Rebirth and seq 0, then DBIRTH before DDATA; 300 results by alias, seq wrapping', async () => {
    const host = await observe('line-a');
    const node = makeNode({ groupId: 'line-a', edgeNodeId: 'station-1' });
    await node.start();

    const nbirth = await host.waitFor((s) => s.topic === 'spBv1.0/line-a/NBIRTH/station-1');
    expect(nbirth).toMatchObject({ qos: 0, retain: false });
    expect(seqOf(nbirth)).toBe(0);
    expect(nbirth.payload!.timestamp).toBeDefined();
    const bdSeq = byName(nbirth.payload, 'bdSeq')!;
    expect(bdSeq.type).toBe('Int64');
    expect(i64(bdSeq.value)).toBe(0n); // fresh state file
    expect(byName(nbirth.payload, 'Node Control/Rebirth')).toMatchObject({ type: 'Boolean', value: false });
    expect(byName(nbirth.payload, 'Model/Id')).toMatchObject({ type: 'String', value: 'ast-bottle' });
    expect(byName(nbirth.payload, 'Properties/Software Version')).toMatchObject({ type: 'String', value: '0.1.0' });

    const dbirth = await host.waitFor((s) => s.topic === 'spBv1.0/line-a/DBIRTH/station-1/camera');
    expect(dbirth.index).toBeGreaterThan(nbirth.index);
    expect(dbirth).toMatchObject({ qos: 0, retain: false });
    expect(seqOf(dbirth)).toBe(1);
    // Births declare every metric with name, alias and datatype; aliases are unique over node and device.
    const declared = new Map<bigint, TahuMetric>();
    for (const m of [...nbirth.payload!.metrics!, ...dbirth.payload!.metrics!]) {
      expect(m.type).toMatch(/^[A-Z]/);
      if (m.alias === undefined) continue;
      expect(declared.has(u64(m.alias))).toBe(false);
      declared.set(u64(m.alias), m);
    }
    const names = dbirth.payload!.metrics!.map((m) => m.name);
    for (const name of ['Inspection/Score', 'Inspection/Normalized Score', 'Inspection/Raw Threshold', 'Inspection/Verdict',
      'Inspection/Part Id', 'Inspection/Latency', 'Counters/Frames', 'Counters/Drops', 'Config/Threshold']) {
      expect(names).toContain(name);
    }
    expect(dbirth.payload!.metrics!.every((m) => m.alias !== undefined && m.timestamp !== undefined)).toBe(true);
    expect(byName(dbirth.payload, 'Inspection/Score')).toMatchObject({ type: 'Double', value: null });
    expect(byName(dbirth.payload, 'Config/Threshold')).toMatchObject({ type: 'Double', value: 0.5 });
    expect(byName(dbirth.payload, 'Inspection/Latency')!.properties).toEqual({ engUnit: { type: 'String', value: 'ms' } });

    // 300 results; the model changes at 150 (an NDATA first), counters in between.
    const outcomes = Array.from({ length: 300 }, (_, i) => result(i, { id: 'ast-bottle', version: i < 150 ? '1' : '2' }));
    for (const [i, o] of outcomes.entries()) {
      node.publish(o);
      if (i === 200) node.reportCounters({ frames: 1234, drops: 5 });
      if (i === 201) node.reportCounters({ frames: 1234, drops: 6 });
    }
    const ddataTopic = 'spBv1.0/line-a/DDATA/station-1/camera';
    await host.waitFor((s, i) => i > dbirth.index && host.of(ddataTopic).length === 302);

    const after = host.seen.slice(nbirth.index);
    // One gapless seq over everything the node sent since NBIRTH, wrapping 255 -> 0.
    after.forEach((s, i) => expect(seqOf(s)).toBe(i % 256));
    expect(after.length).toBe(2 + 300 + 2 + 1);
    expect(after.some((s, i) => i > 0 && seqOf(s) === 0)).toBe(true);
    for (const s of after) {
      expect(s.topic).toMatch(TOPIC);
      expect(s).toMatchObject({ qos: 0, retain: false });
    }

    const ndata = after.filter((s) => s.topic === 'spBv1.0/line-a/NDATA/station-1');
    expect(ndata).toHaveLength(1);
    const ndataIndex = after.indexOf(ndata[0]!);
    const version = ndata[0]!.payload!.metrics!.find((m) => declared.get(u64(m.alias))?.name === 'Model/Version')!;
    expect(version.value).toBe('2');

    const ddata = after.filter((s) => s.topic === ddataTopic);
    const resultMessages = ddata.filter((s) => s.payload!.metrics!.length > 2);
    expect(resultMessages).toHaveLength(300);
    expect(after.indexOf(resultMessages[150]!)).toBe(ndataIndex + 1);
    resultMessages.forEach((s, i) => {
      const r = outcomes[i]!.record;
      const values = new Map<string, TahuMetric>();
      for (const m of s.payload!.metrics!) {
        expect(m.name).toBeUndefined(); // data is by alias only
        const def = declared.get(u64(m.alias));
        expect(def).toBeDefined();
        expect(m.type).toBe(def!.type);
        expect(u64(m.timestamp)).toBe(BigInt(Date.parse(r.capturedAt)));
        values.set(def!.name!, m);
      }
      expect(u64(values.get('Inspection/Seq')!.value)).toBe(BigInt(r.seq));
      expect(values.get('Inspection/Part Id')!.value).toBe(r.partId);
      expect(u64(values.get('Inspection/Captured At')!.value)).toBe(BigInt(Date.parse(r.capturedAt)));
      expect(values.get('Inspection/Score')!.value).toBe(r.score);
      expect(values.get('Inspection/Normalized Score')!.value).toBe(r.normalizedScore);
      expect(values.get('Inspection/Raw Threshold')!.value).toBe(r.threshold);
      expect(values.get('Inspection/Verdict')!.value).toBe(r.verdict);
      expect(values.get('Inspection/Reason')!.value).toBe(r.reason ?? null);
      expect(values.get('Inspection/Latency')!.value).toBe(r.latencyMs);
    });

    const counters = ddata.filter((s) => s.payload!.metrics!.length <= 2);
    const named = counters.map((s) => Object.fromEntries(s.payload!.metrics!.map((m) => [declared.get(u64(m.alias))!.name, u64(m.value)])));
    expect(named).toEqual([{ 'Counters/Frames': 1234n, 'Counters/Drops': 5n }, { 'Counters/Drops': 6n }]);
  });

  it('NCMD Rebirth re-sends NBIRTH (seq 0, same bdSeq) and DBIRTH; DCMD threshold goes through the callback', async () => {
    const host = await observe('line-b');
    const writes: number[] = [];
    const { logger, lines } = captureLogs();
    const node = makeNode({
      groupId: 'line-b',
      edgeNodeId: 'station-2',
      logger,
      onThresholdWrite: (value) => {
        writes.push(value);
        if (value === 0.9) return false; // the agent refuses this one
        if (value === 0.8) throw new Error('not now');
        return Promise.resolve(true);
      },
    });
    await node.start();
    const first = await host.waitFor((s) => s.topic === 'spBv1.0/line-b/DBIRTH/station-2/camera');
    const firstBirth = host.of('spBv1.0/line-b/NBIRTH/station-2')[0]!;
    node.publish(result(1));
    await host.waitFor((s) => s.topic.includes('/DDATA/'), first.index);

    const send = (topic: string, metrics: object[]) =>
      host.client.publishAsync(topic, Buffer.from(tahu.encodePayload({ timestamp: Date.now(), metrics })), { qos: 1 });
    const ncmd = 'spBv1.0/line-b/NCMD/station-2';
    const dcmd = 'spBv1.0/line-b/DCMD/station-2/camera';

    const mark = host.seen.length;
    await send(ncmd, [{ name: 'Node Control/Rebirth', type: 'Boolean', value: true }]);
    const nbirth = await host.waitFor((s) => s.topic === 'spBv1.0/line-b/NBIRTH/station-2', mark);
    expect(seqOf(nbirth)).toBe(0);
    expect(i64(byName(nbirth.payload, 'bdSeq')!.value)).toBe(i64(byName(firstBirth.payload, 'bdSeq')!.value));
    const dbirth = await host.waitFor((s) => s.topic === 'spBv1.0/line-b/DBIRTH/station-2/camera', nbirth.index);
    expect(seqOf(dbirth)).toBe(1);
    expect(host.seen[nbirth.index + 1]).toBe(host.seen[dbirth.index]);
    const thresholdAlias = byName(dbirth.payload, 'Config/Threshold')!.alias;
    // The result published before the rebirth is reported in the new DBIRTH.
    expect(byName(dbirth.payload, 'Inspection/Part Id')!.value).toBe('P-1');

    // Accepted writes: a Double by alias, a Float by name (read back as 0.65, not 0.6499999762).
    await send(dcmd, [{ alias: thresholdAlias, type: 'Double', value: 0.7 }]);
    await send(dcmd, [{ name: 'Config/Threshold', type: 'Float', value: 0.65 }]);
    // Refused by the callback, or invalid (never reaching it), or not writable.
    await send(dcmd, [{ alias: thresholdAlias, type: 'Double', value: 0.9 }]);
    await send(dcmd, [{ alias: thresholdAlias, type: 'Double', value: 0.8 }]);
    await send(dcmd, [{ alias: thresholdAlias, type: 'Double', value: 1.5 }]);
    await send(dcmd, [{ alias: thresholdAlias, type: 'Double', value: 0 }]);
    await send(dcmd, [{ alias: thresholdAlias, type: 'Double', value: Number.NaN }]);
    await send(dcmd, [{ alias: thresholdAlias, type: 'String', value: '0.6' }]);
    await send(dcmd, [{ alias: thresholdAlias, type: 'Boolean', value: true }]);
    await send(dcmd, [{ name: 'Inspection/Score', type: 'Double', value: 0.3 }]);
    await host.client.publishAsync(dcmd, Buffer.from('not protobuf'), { qos: 1 });
    // A last accepted write: once its DDATA is out, every command before it has been handled.
    await send(dcmd, [{ alias: thresholdAlias, type: 'Double', value: 0.55 }]);
    await host.waitFor((s) => s.topic.includes('/DDATA/') && s.payload!.metrics![0]!.value === 0.55, dbirth.index);

    expect(writes).toEqual([0.7, 0.65, 0.9, 0.8, 0.55]);
    const thresholdData = host.seen
      .slice(dbirth.index)
      .filter((s) => s.topic === 'spBv1.0/line-b/DDATA/station-2/camera')
      .map((s) => s.payload!.metrics!);
    expect(thresholdData.map((ms) => ms.length)).toEqual([1, 1, 1]);
    expect(thresholdData.map((ms) => u64(ms[0]!.alias))).toEqual(Array(3).fill(u64(thresholdAlias)));
    expect(thresholdData.map((ms) => ms[0]!.value)).toEqual([0.7, 0.65, 0.55]);
    expect(lines.filter((l) => /threshold write refused/.test(String(l.msg)))).toHaveLength(2);
    expect(lines.filter((l) => /invalid threshold write/.test(String(l.msg)))).toHaveLength(5);
    expect(lines.filter((l) => /not writable/.test(String(l.msg)))).toHaveLength(1);
    expect(lines.filter((l) => /not a Sparkplug B payload/.test(String(l.msg)))).toHaveLength(1);

    // Seq stays gapless through commands, and the next birth reports the threshold in force.
    host.seen.slice(nbirth.index).forEach((s, i) => expect(seqOf(s)).toBe(i));
    const mark2 = host.seen.length;
    await send(ncmd, [{ alias: byName(nbirth.payload, 'Node Control/Rebirth')!.alias, type: 'Boolean', value: true }]);
    const dbirth2 = await host.waitFor((s) => s.topic.includes('/DBIRTH/'), mark2);
    expect(byName(dbirth2.payload, 'Config/Threshold')!.value).toBe(0.55);

    // NCMD Rebirth = false does nothing (commands are handled in order: the write after it is the marker).
    const mark3 = host.seen.length;
    await send(ncmd, [{ name: 'Node Control/Rebirth', type: 'Boolean', value: false }]);
    await send(dcmd, [{ alias: thresholdAlias, type: 'Double', value: 0.45 }]);
    await host.waitFor((s) => s.topic.includes('/DDATA/') && s.payload!.metrics![0]!.value === 0.45, mark3);
    expect(host.seen.slice(mark3).map((s) => s.topic)).toEqual(['spBv1.0/line-b/DDATA/station-2/camera']);
  });

  it('NDEATH is the Will with the last NBIRTH bdSeq; bdSeq goes up across restarts; a clean stop says goodbye', async () => {
    const host = await observe('line-c');
    const stateFile = join(dir, 'line-c-state', 'sparkplug.json');
    const nbirthTopic = 'spBv1.0/line-c/NBIRTH/station-3';
    const ndeathTopic = 'spBv1.0/line-c/NDEATH/station-3';

    const child = spawnNode({ groupId: 'line-c', edgeNodeId: 'station-3', stateFile });
    const birth1 = await host.waitFor((s) => s.topic === nbirthTopic, 0, 15_000);
    const bd1 = i64(byName(birth1.payload, 'bdSeq')!.value);
    expect(bd1).toBe(0n);
    await host.waitFor((s) => s.topic.includes('/DBIRTH/'), birth1.index);
    child.kill('SIGKILL');
    const death1 = await host.waitFor((s) => s.topic === ndeathTopic, birth1.index);
    expect(death1).toMatchObject({ qos: 1, retain: false });
    expect(death1.payload!.seq).toBeUndefined();
    expect(byName(death1.payload, 'bdSeq')!.type).toBe('Int64');
    expect(i64(byName(death1.payload, 'bdSeq')!.value)).toBe(bd1);

    // Restart from the same state file: the next bdSeq, persisted.
    const node = makeNode({ groupId: 'line-c', edgeNodeId: 'station-3', stateFile });
    await node.start();
    const birth2 = await host.waitFor((s) => s.topic === nbirthTopic, death1.index);
    const bd2 = i64(byName(birth2.payload, 'bdSeq')!.value);
    expect(bd2).toBe(bd1 + 1n);
    expect(JSON.parse(await readFile(stateFile, 'utf8')).bdSeq).toBe(Number(bd2));
    const dbirth2 = await host.waitFor((s) => s.topic.includes('/DBIRTH/'), birth2.index);

    await node.stop();
    const death2 = await host.waitFor((s) => s.topic === ndeathTopic, birth2.index);
    expect(i64(byName(death2.payload, 'bdSeq')!.value)).toBe(bd2);
    const ddeath = host.seen.slice(birth2.index).find((s) => s.topic === 'spBv1.0/line-c/DDEATH/station-3/camera')!;
    expect(ddeath).toBeDefined();
    expect(seqOf(ddeath)).toBe(seqOf(host.seen[dbirth2.index]!) + 1);
    expect(host.seen.indexOf(ddeath)).toBeLessThan(death2.index);
    // The DISCONNECT discarded the Will: no second NDEATH.
    await new Promise((r) => setTimeout(r, 300));
    expect(host.of(ndeathTopic, birth2.index)).toHaveLength(1);

    // bdSeq counts 0..255 and wraps.
    await writeFile(stateFile, JSON.stringify({ bdSeq: 255 }));
    const wrapped = makeNode({ groupId: 'line-c', edgeNodeId: 'station-3', stateFile });
    const mark = host.seen.length;
    await wrapped.start();
    const birth3 = await host.waitFor((s) => s.topic === nbirthTopic, mark);
    expect(i64(byName(birth3.payload, 'bdSeq')!.value)).toBe(0n);
  });

  it('after a broker restart connects with the next bdSeq, births again from seq 0, and forwards what it held as historical DDATA', async () => {
    const host = await observe('line-d', 'sparkplug-test-host-d');
    const stateFile = join(dir, 'line-d.json');
    const node = makeNode({ groupId: 'line-d', edgeNodeId: 'station-4', stateFile, reconnectMs: 500 });
    await node.start();
    const birth1 = await host.waitFor((s) => s.topic === 'spBv1.0/line-d/NBIRTH/station-4');
    const bd1 = i64(byName(birth1.payload, 'bdSeq')!.value);
    node.publish(result(1));
    await host.waitFor((s) => s.topic.includes('/DDATA/'), birth1.index);

    await broker.pause();
    await until('session down', () => !node.online, 10_000);
    // Offline: held, then sent after the next birth as historical data (the DBIRTH carries the newest values).
    for (const i of [2, 3, 4]) node.publish(result(i));
    expect(node.forwarding).toEqual({ held: 3, forwarded: 0, dropped: 0 });
    await broker.resume();

    const birth2 = await host.waitFor((s) => s.topic === 'spBv1.0/line-d/NBIRTH/station-4', birth1.index + 1, 10_000);
    const bd2 = i64(byName(birth2.payload, 'bdSeq')!.value);
    expect(bd2).toBeGreaterThan(bd1);
    expect(bd2).toBe(BigInt(node.bdSeq));
    expect(JSON.parse(await readFile(stateFile, 'utf8')).bdSeq).toBe(node.bdSeq);
    expect(seqOf(birth2)).toBe(0);
    const dbirth2 = await host.waitFor((s) => s.topic.includes('/DBIRTH/'), birth2.index);
    expect(seqOf(dbirth2)).toBe(1);
    expect(byName(dbirth2.payload, 'Inspection/Part Id')!.value).toBe('P-4');
    const names = new Map(dbirth2.payload!.metrics!.map((m) => [u64(m.alias), m.name!]));
    const ddataAfter = () => host.seen.filter((x, i) => i > dbirth2.index && x.topic.includes('/DDATA/'));
    await until('3 historical DDATA', () => ddataAfter().length >= 3, 10_000);
    const forwarded = ddataAfter().slice(0, 3);
    expect(forwarded.map(seqOf)).toEqual([2, 3, 4]);
    forwarded.forEach((s, k) => {
      const r = result(2 + k).record;
      const metrics = s.payload!.metrics!;
      expect(metrics.every((m) => m.isHistorical === true)).toBe(true);
      expect(metrics.every((m) => u64(m.timestamp) === BigInt(Date.parse(r.capturedAt)))).toBe(true);
      const seqMetric = metrics.find((m) => names.get(u64(m.alias)) === 'Inspection/Seq')!;
      expect(u64(seqMetric.value)).toBe(BigInt(r.seq));
    });
    expect(node.forwarding).toEqual({ held: 0, forwarded: 3, dropped: 0 });
    // Live again: a new result is current data, not historical.
    node.publish(result(5));
    const live = await host.waitFor((x) => x.topic.includes('/DDATA/') && seqOf(x) === 5, dbirth2.index);
    expect(live.payload!.metrics!.some((m) => m.isHistorical)).toBe(false);
  });

  it('holds at most storeWhileOffline results while the session is down, dropping the oldest and counting them', async () => {
    const host = await observe('line-h', 'sparkplug-test-host-h');
    const node = makeNode({ groupId: 'line-h', edgeNodeId: 'station-8', reconnectMs: 300, storeWhileOffline: 2 });
    await node.start();
    const birth1 = await host.waitFor((s) => s.topic === 'spBv1.0/line-h/NBIRTH/station-8');
    await broker.pause();
    await until('session down', () => !node.online, 10_000);
    for (const i of [1, 2, 3, 4, 5]) node.publish(result(i));
    expect(node.forwarding).toEqual({ held: 2, forwarded: 0, dropped: 3 });
    // The same figures on the agent's /metrics.
    const metrics = new AgentMetrics('station-8', false);
    metrics.observeSparkplug(() => node.forwarding);
    const scrape = async () =>
      Object.fromEntries(
        (await metrics.registry.metrics()).split('\n').filter((l) => l.startsWith('ast_sparkplug_')).map((l) => [l.split('{')[0], Number(l.split(' ').at(-1))]),
      );
    expect(await scrape()).toEqual({ ast_sparkplug_held: 2, ast_sparkplug_forwarded_total: 0, ast_sparkplug_dropped_total: 3 });
    await broker.resume();
    const birth2 = await host.waitFor((s) => s.topic === 'spBv1.0/line-h/NBIRTH/station-8', birth1.index + 1, 10_000);
    await until('forwarded', () => node.forwarding.forwarded === 2, 10_000);
    const dbirth = await host.waitFor((s) => s.topic.includes('/DBIRTH/'), birth2.index);
    const names = new Map(dbirth.payload!.metrics!.map((m) => [u64(m.alias), m.name!]));
    const ddataAfter = () => host.seen.filter((x, i) => i > dbirth.index && x.topic.includes('/DDATA/'));
    await until('2 historical DDATA', () => ddataAfter().length === 2, 10_000);
    const parts = ddataAfter()
      .map((x) => x.payload!.metrics!.find((m) => names.get(u64(m.alias)) === 'Inspection/Part Id')!.value);
    expect(parts).toEqual(['P-4', 'P-5']);
    expect(await scrape()).toEqual({ ast_sparkplug_held: 0, ast_sparkplug_forwarded_total: 2, ast_sparkplug_dropped_total: 3 });
  });

  it('with a primary host, births wait for its STATE online and end when it goes offline', async () => {
    const host = await observe('line-e');
    const stateTopic = 'spBv1.0/STATE/scada-e';
    const state = (online: boolean, timestamp: number) =>
      host.client.publishAsync(stateTopic, JSON.stringify({ online, timestamp }), { qos: 1, retain: true });
    const node = makeNode({ groupId: 'line-e', edgeNodeId: 'station-5', primaryHostId: 'scada-e' });
    await node.start();
    await new Promise((r) => setTimeout(r, 500));
    node.publish(result(1));
    expect(host.seen).toHaveLength(0);

    const t0 = Date.now();
    await state(true, t0);
    const birth1 = await host.waitFor((s) => s.topic === 'spBv1.0/line-e/NBIRTH/station-5');
    const bd1 = i64(byName(birth1.payload, 'bdSeq')!.value);
    const dbirth1 = await host.waitFor((s) => s.topic.includes('/DBIRTH/'), birth1.index);
    expect(byName(dbirth1.payload, 'Inspection/Part Id')!.value).toBe('P-1');

    // A stale OFFLINE (older timestamp) is ignored.
    await state(false, t0 - 1000);
    await new Promise((r) => setTimeout(r, 200));
    expect(host.of('spBv1.0/line-e/NDEATH/station-5')).toHaveLength(0);

    // OFFLINE: NDEATH with this session's bdSeq, then a new session waits for the host.
    await state(false, t0 + 1);
    const death = await host.waitFor((s) => s.topic === 'spBv1.0/line-e/NDEATH/station-5', birth1.index);
    expect(i64(byName(death.payload, 'bdSeq')!.value)).toBe(bd1);
    await new Promise((r) => setTimeout(r, 600));
    expect(host.of('spBv1.0/line-e/NBIRTH/station-5', death.index)).toHaveLength(0);

    await state(true, t0 + 2);
    const birth2 = await host.waitFor((s) => s.topic === 'spBv1.0/line-e/NBIRTH/station-5', death.index);
    expect(seqOf(birth2)).toBe(0);
    expect(i64(byName(birth2.payload, 'bdSeq')!.value)).toBeGreaterThan(bd1);
    await host.client.publishAsync(stateTopic, '', { qos: 1, retain: true });
  });
});
