/**
 * Commands over MQTT: good requests answered with the transaction echoed; malformed JSON, unknown
 * commands, schema errors (naming the field), oversized payloads, handler failures answered with errors
 * and nothing run; MQTT 5 response topic and correlation data honoured (Mosquitto), 3.1.1 (aedes).
 */
import { connectAsync, type IPublishPacket, type MqttClient } from 'mqtt';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { CommandResponseSchema, SetThresholdRequestSchema, type CommandResponse } from '../src/config/mqtt-payloads.js';
import { CommandServer } from '../src/publish/command-server.js';
import { EmbeddedBroker } from '../src/publish/embedded-broker.js';
import { MqttConnection } from '../src/publish/mqtt-connection.js';
import { testMqttConfig } from './support/mqtt-config.js';
import { TestBroker } from './support/mosquitto.js';
import { sleep } from './support/wait.js';

const silent = pino({ level: 'silent' });
const IDENTITY = { agentVersion: '0.1.0', model: { id: 'demo', version: '1.0.0' }, provider: 'cpu' };

interface Received {
  topic: string;
  body: CommandResponse;
  packet: IPublishPacket;
}

class Requester {
  readonly responses: Received[] = [];
  private constructor(readonly client: MqttClient) {}
  static async connect(url: string, protocolVersion: 4 | 5): Promise<Requester> {
    const client = await connectAsync(url, { protocolVersion, reconnectPeriod: 0 });
    const r = new Requester(client);
    client.on('message', (topic, payload, packet) => {
      if (topic.endsWith('/response') || topic.startsWith('client/')) r.responses.push({ topic, body: CommandResponseSchema.parse(JSON.parse(payload.toString())), packet });
    });
    await client.subscribeAsync(['ast/st1/cmd/+/response', 'client/#'], { qos: 1 });
    return r;
  }

  /** Sends a request and waits for the next response on its response topic. */
  async ask(name: string, payload: string | Buffer | object, options: { responseTopic?: string; correlationData?: Buffer; retain?: boolean } = {}): Promise<Received> {
    const before = this.responses.length;
    const body = typeof payload === 'string' || Buffer.isBuffer(payload) ? payload : JSON.stringify(payload);
    const properties = options.responseTopic ? { responseTopic: options.responseTopic, correlationData: options.correlationData } : undefined;
    await this.client.publishAsync(`ast/st1/cmd/${name}`, body, { qos: 1, retain: options.retain ?? false, ...(properties ? { properties } : {}) });
    const end = Date.now() + 5000;
    while (this.responses.length === before) {
      if (Date.now() > end) throw new Error(`no response to ${name}`);
      await sleep(10);
    }
    return this.responses[before]!;
  }
}

let embedded: EmbeddedBroker;
let mosquitto: TestBroker;
const stops: (() => Promise<unknown>)[] = [];
const thresholdCalls: unknown[] = [];

async function serve(url: string, clientId?: string, logger = silent): Promise<{ conn: MqttConnection; server: CommandServer }> {
  const mqtt = { ...testMqttConfig(url), ...(clientId ? { clientId } : {}) };
  const conn = await MqttConnection.create({ mqtt, station: 'st1', identity: IDENTITY, logger: silent });
  const server = new CommandServer({ connection: conn, logger, status: () => ({ queued: 3 }) });
  server.register('set-threshold', {
    schema: SetThresholdRequestSchema,
    handler: (args) => {
      thresholdCalls.push(args);
      return { threshold: args };
    },
  });
  server.register('chunk', {
    schema: z.strictObject({ data: z.string() }),
    maxPayloadBytes: 256 * 1024,
    handler: ({ data }) => ({ received: data.length }),
  });
  server.register('explode', { schema: z.strictObject({}), handler: () => Promise.reject(new Error('camera busy')) });
  server.register('hang', { schema: z.strictObject({}), timeoutMs: 100, handler: () => new Promise<never>(() => {}) });
  const order: string[] = [];
  server.register('slow', {
    schema: z.strictObject({ id: z.int() }),
    handler: async ({ id }) => {
      order.push(`start ${id}`);
      await sleep(100);
      order.push(`end ${id}`);
      return { order: [...order] };
    },
  });
  server.start();
  conn.start();
  await conn.waitUntilOnline(5000);
  await sleep(100); // the subscription is acknowledged
  stops.push(async () => {
    await server.stop();
    await conn.stop();
  });
  return { conn, server };
}

beforeAll(async () => {
  embedded = await EmbeddedBroker.start({ port: 0 });
  mosquitto = await TestBroker.start();
});

afterAll(async () => {
  for (const s of stops.reverse()) await s();
  await embedded.stop();
  await mosquitto.stop();
});

describe('CommandServer over MQTT 3.1.1 (aedes)', () => {
  let req: Requester;
  beforeAll(async () => {
    await serve(embedded.url);
    req = await Requester.connect(embedded.url, 4);
    stops.push(() => req.client.endAsync());
  });

  it('answers status with the transaction echoed', async () => {
    const r = await req.ask('status', { transaction: 'tx-1' });
    expect(r.topic).toBe('ast/st1/cmd/status/response');
    expect(r.packet.retain).toBe(false);
    expect(r.body).toMatchObject({ ok: true, transaction: 'tx-1', state: 'online', station: 'st1', protocolVersion: 4, queued: 3 });
    expect((r.body as unknown as { commands: string[] }).commands).toEqual(['chunk', 'explode', 'hang', 'set-threshold', 'slow', 'status']);
    // An empty message (also what clears a retained one) runs nothing.
    expect((await req.ask('status', '')).body).toEqual({ ok: false, error: 'empty request (send {} for a command without arguments)' });
  });

  it('runs a good set-threshold and refuses bad ones, naming the field, without running the handler', async () => {
    thresholdCalls.length = 0;
    expect((await req.ask('set-threshold', { transaction: 7, normalized: 0.6 })).body).toEqual({ ok: true, transaction: 7, threshold: { normalized: 0.6 } });
    expect(thresholdCalls).toEqual([{ normalized: 0.6 }]);

    const tooBig = await req.ask('set-threshold', { transaction: 8, normalized: 1.5 });
    expect(tooBig.body).toMatchObject({ ok: false, transaction: 8 });
    expect((tooBig.body as { error: string }).error).toMatch(/^invalid request: normalized: /);
    const wrongType = await req.ask('set-threshold', { raw: 'high' });
    expect((wrongType.body as { error: string }).error).toMatch(/raw: .*number/);
    const unknownKey = await req.ask('set-threshold', { normalized: 0.5, bogus: 1 });
    expect((unknownKey.body as { error: string }).error).toMatch(/bogus/);
    const both = await req.ask('set-threshold', { normalized: 0.5, raw: 3 });
    expect((both.body as { error: string }).error).toMatch(/exactly one of normalized or raw/);
    const badTransaction = await req.ask('set-threshold', { normalized: 0.5, transaction: { a: 1 } });
    expect((badTransaction.body as { error: string }).error).toMatch(/transaction/);
    expect(thresholdCalls).toHaveLength(1);
  });

  it('answers malformed JSON, non-objects, unknown commands and oversized payloads with errors', async () => {
    const malformed = await req.ask('set-threshold', '{"normalized": 0.5');
    expect(malformed.body).toMatchObject({ ok: false });
    expect((malformed.body as { error: string }).error).toMatch(/^malformed JSON/);
    expect((await req.ask('status', '[1,2]')).body).toMatchObject({ ok: false, error: 'the request must be a JSON object' });

    const unknown = await req.ask('self-destruct', { transaction: 'u1' });
    expect(unknown.topic).toBe('ast/st1/cmd/self-destruct/response');
    expect(unknown.body).toMatchObject({ ok: false, transaction: 'u1' });
    expect((unknown.body as { error: string }).error).toMatch(/^unknown command "self-destruct" \(known: .*status/);

    const big = JSON.stringify({ normalized: 0.5, pad: 'x'.repeat(70 * 1024) });
    const oversized = await req.ask('set-threshold', big);
    expect(oversized.body).toEqual({ ok: false, error: `payload too large: ${big.length} bytes (limit 65536)` });
    expect(thresholdCalls).toHaveLength(1);

    // A command with a larger limit of its own takes it.
    const chunk = await req.ask('chunk', { transaction: 'c', data: 'y'.repeat(100 * 1024) });
    expect(chunk.body).toEqual({ ok: true, transaction: 'c', received: 100 * 1024 });
  });

  it('turns handler failures and timeouts into error responses, and runs one command\'s requests in order', async () => {
    expect((await req.ask('explode', { transaction: 'e' })).body).toEqual({ ok: false, transaction: 'e', error: 'camera busy' });
    expect((await req.ask('hang', {})).body).toEqual({ ok: false, error: 'no answer within 100 ms' });

    const before = req.responses.length;
    await req.client.publishAsync('ast/st1/cmd/slow', JSON.stringify({ id: 1 }), { qos: 1 });
    await req.client.publishAsync('ast/st1/cmd/slow', JSON.stringify({ id: 2 }), { qos: 1 });
    while (req.responses.length < before + 2) await sleep(20);
    const last = req.responses[before + 1]!.body as unknown as { order: string[] };
    expect(last.order).toEqual(['start 1', 'end 1', 'start 2', 'end 2']);
  });

  it('never executes the retained copy of a request replayed on subscribe', async () => {
    thresholdCalls.length = 0;
    await req.client.publishAsync('ast/st1/cmd/set-threshold', JSON.stringify({ normalized: 0.7 }), { qos: 1, retain: true });
    await sleep(200);
    // The live copy of a retained publish reaches current subscribers without the retain flag; only a copy
    // replayed on (re)subscribe carries it. Reconnect the server to see the replay refused.
    expect(thresholdCalls).toHaveLength(1);
    const before = req.responses.length;
    const logged: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => void logged.push(line) });
    const { conn } = await serve(embedded.url, 'ast-edge-st1-second', logger);
    await sleep(300);
    await conn.stop();
    expect(thresholdCalls).toHaveLength(1);
    expect(req.responses.length).toBe(before);
    expect(logged.filter((l) => l.includes('retained command request ignored'))).toHaveLength(1);
    // Clearing the retained request runs nothing either.
    const cleared = await req.ask('set-threshold', '', { retain: true });
    expect(cleared.body).toMatchObject({ ok: false, error: /^empty request/ });
    expect(thresholdCalls).toHaveLength(1);
  });
});

describe('CommandServer over MQTT 5 (Mosquitto)', () => {
  let req: Requester;
  beforeAll(async () => {
    await serve(mosquitto.url);
    req = await Requester.connect(mosquitto.url, 5);
    stops.push(() => req.client.endAsync());
  });

  it('answers on the request\'s response topic with its correlation data', async () => {
    const correlationData = Buffer.from([1, 2, 3, 250]);
    const r = await req.ask('status', { transaction: 'v5' }, { responseTopic: 'client/replies/42', correlationData });
    expect(r.topic).toBe('client/replies/42');
    expect(r.body).toMatchObject({ ok: true, transaction: 'v5', protocolVersion: 5 });
    expect(Buffer.from(r.packet.properties!.correlationData!)).toEqual(correlationData);
    expect(r.packet.properties?.contentType).toBe('application/json');

    const bad = await req.ask('nope', '{', { responseTopic: 'client/replies/43', correlationData });
    expect(bad.topic).toBe('client/replies/43');
    expect(bad.body.ok).toBe(false);
  });

  it('refuses a response topic that is one of the station\'s own data topics', async () => {
    const r = await req.ask('status', {}, { responseTopic: 'ast/st1/reject' });
    expect(r.topic).toBe('ast/st1/cmd/status/response');
  });
});
