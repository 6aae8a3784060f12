/**
 * The broker connection against a real Mosquitto and the embedded aedes: retained availability and the
 * last will of a killed process, MQTT 5 → 3.1.1 fallback, TLS and credentials, reconnect logging.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { connectAsync, type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StatusPayloadSchema } from '../src/config/mqtt-payloads.js';
import { EmbeddedBroker } from '../src/publish/embedded-broker.js';
import { MqttConnection } from '../src/publish/mqtt-connection.js';
import { testMqttConfig } from './support/mqtt-config.js';
import { makeTestPki } from './support/tls.js';
import { freePort, TestBroker } from './support/mosquitto.js';
import { until } from './support/wait.js';

const IDENTITY = { agentVersion: '0.1.0', model: { id: 'demo-part', version: '1.2.3' }, provider: 'cpu' };

interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

function capturingLogger(): { logger: pino.Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  return { logger, lines };
}

const silent = pino({ level: 'silent' });

interface Received {
  topic: string;
  payload: Buffer;
  packet: IPublishPacket;
}

async function subscriber(url: string, filter: string, options: IClientOptions = {}): Promise<{ client: MqttClient; messages: Received[] }> {
  const client = await connectAsync(url, { protocolVersion: 5, reconnectPeriod: 200, ...options });
  const messages: Received[] = [];
  client.on('message', (topic, payload, packet) => messages.push({ topic, payload, packet }));
  await client.subscribeAsync(filter, { qos: 1 });
  return { client, messages };
}


function statusOf(m: Received) {
  return StatusPayloadSchema.parse(JSON.parse(m.payload.toString()));
}

let broker: TestBroker;
const cleanups: (() => Promise<unknown> | unknown)[] = [];

beforeAll(async () => {
  broker = await TestBroker.start();
});

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await broker.stop();
});

describe('MqttConnection', () => {
  it('publishes a retained online status with version info, and a retained offline on a clean stop', async () => {
    const conn = await MqttConnection.create({ mqtt: testMqttConfig(broker.url), station: 'st-a', identity: IDENTITY, logger: silent });
    conn.start();
    await conn.waitUntilOnline(5000);
    expect(conn.clientId).toBe('ast-edge-st-a');
    expect(conn.protocolVersion).toBe(5);

    // A subscriber arriving later gets the retained status.
    const sub = await subscriber(broker.url, 'ast/st-a/status');
    cleanups.push(() => sub.client.endAsync());
    const first = await until('online status', () => sub.messages.find((m) => m.packet.retain));
    const online = statusOf(first);
    expect(online).toMatchObject({ state: 'online', station: 'st-a', agent: { name: 'ast-edge', version: '0.1.0' }, model: IDENTITY.model, provider: 'cpu', protocolVersion: 5 });
    expect(first.packet.qos).toBe(1);

    conn.updateIdentity({ model: { id: 'demo-part', version: '1.3.0' }, provider: 'cuda' });
    await until('updated status', () => sub.messages.map(statusOf).find((s) => s.state === 'online' && s.model?.version === '1.3.0' && s.provider === 'cuda'));

    await conn.stop();
    const offline = await until('offline status', () => sub.messages.map(statusOf).find((s) => s.state === 'offline'));
    expect(offline).toMatchObject({ state: 'offline', station: 'st-a', reason: 'shutdown' });
    expect(conn.state).toBe('stopped');

    const late = await subscriber(broker.url, 'ast/st-a/status');
    cleanups.push(() => late.client.endAsync());
    const retained = await until('retained offline', () => late.messages.find((m) => m.packet.retain));
    expect(statusOf(retained)).toMatchObject({ state: 'offline', reason: 'shutdown' });
  });

  it('leaves a retained offline last will when its process is killed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ast-mqtt-will-'));
    const script = join(dir, 'agent.mts');
    const moduleUrl = new URL(`file://${resolve('src/publish/mqtt-connection.ts')}`).href;
    writeFileSync(
      script,
      [
        `import { MqttConnection } from ${JSON.stringify(moduleUrl)};`,
        `const noop = () => {};`,
        `const logger = { info: noop, warn: noop, error: noop, debug: noop };`,
        `const conn = await MqttConnection.create({ mqtt: ${JSON.stringify(testMqttConfig(broker.url, { keepaliveS: 60 }))}, station: 'st-kill',`,
        `  identity: ${JSON.stringify(IDENTITY)}, logger });`,
        `conn.start();`,
        `await conn.waitUntilOnline(10000);`,
        `process.stdout.write('online\\n');`,
        `setInterval(() => {}, 1000);`,
      ].join('\n'),
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd: resolve('.'), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    cleanups.push(() => child.kill('SIGKILL'));
    await until('child online', () => out.includes('online'), 20_000).catch((e: Error) => {
      throw new Error(`${e.message}\n${err}`);
    });

    const sub = await subscriber(broker.url, 'ast/st-kill/status');
    cleanups.push(() => sub.client.endAsync());
    await until('retained online', () => sub.messages.map(statusOf).find((s) => s.state === 'online'));

    // SIGKILL: no DISCONNECT, the socket just dies; the broker publishes the will at once.
    child.kill('SIGKILL');
    const will = await until('last will', () => sub.messages.find((m) => statusOf(m).state === 'offline'));
    expect(statusOf(will)).toEqual({ state: 'offline', station: 'st-kill', reason: 'connection-lost' });

    const late = await subscriber(broker.url, 'ast/st-kill/status');
    cleanups.push(() => late.client.endAsync());
    const retained = await until('retained will', () => late.messages.find((m) => m.packet.retain));
    expect(statusOf(retained)).toMatchObject({ state: 'offline', reason: 'connection-lost' });
  }, 30_000);

  it('falls back from MQTT 5 to 3.1.1 when the broker (aedes) refuses 5, and works', async () => {
    const embedded = await EmbeddedBroker.start({ port: 0 });
    cleanups.push(() => embedded.stop());
    const { logger, lines } = capturingLogger();
    const conn = await MqttConnection.create({ mqtt: testMqttConfig(embedded.url), station: 'st-v4', identity: IDENTITY, logger });
    cleanups.push(() => conn.stop());
    conn.start();
    await conn.waitUntilOnline(5000);
    expect(conn.protocolVersion).toBe(4);
    expect(conn.status?.protocolVersion).toBe(4);
    expect(lines.filter((l) => l.msg.includes('refused MQTT 5'))).toHaveLength(1);

    const sub = await subscriber(embedded.url, 'ast/st-v4/#', { protocolVersion: 4 });
    cleanups.push(() => sub.client.endAsync());
    const retained = await until('retained status', () => sub.messages.find((m) => m.topic === 'ast/st-v4/status'));
    expect(statusOf(retained)).toMatchObject({ state: 'online', protocolVersion: 4 });

    // QoS 1 round trip, with MQTT 5 properties silently dropped.
    await conn.publish('ast/st-v4/result', '{"x":1}', { qos: 1, properties: { messageExpiryInterval: 5 } });
    await until('message', () => sub.messages.find((m) => m.topic === 'ast/st-v4/result'));

    // And subscriptions work on 3.1.1.
    const got: string[] = [];
    conn.subscribe('ast/st-v4/in/+', (_t, payload) => got.push(payload.toString()));
    await new Promise((r) => setTimeout(r, 100));
    await sub.client.publishAsync('ast/st-v4/in/a', 'hello', { qos: 1 });
    await until('subscribed message', () => got.includes('hello'));
  });

  it('reconnects with backoff after a broker outage, logging the state change once, not every retry', async () => {
    const { logger, lines } = capturingLogger();
    const conn = await MqttConnection.create({
      mqtt: testMqttConfig(broker.url),
      station: 'st-r',
      identity: IDENTITY,
      logger,
      backoff: { initialMs: 50, maxMs: 200 },
    });
    cleanups.push(() => conn.stop());
    const events: string[] = [];
    conn.on('online', (i) => events.push(`online#${i.connection}`));
    conn.on('offline', () => events.push('offline'));
    const got: string[] = [];
    conn.subscribe('ast/st-r/echo', (_t, p) => got.push(p.toString()));
    conn.start();
    await conn.waitUntilOnline(5000);

    await broker.pause();
    await until('offline', () => conn.state === 'reconnecting');
    await expect(conn.publish('ast/st-r/x', 'y', { qos: 1 })).rejects.toThrow(/not connected/);
    await new Promise((r) => setTimeout(r, 1500)); // ≥ 7 failed attempts at 200 ms
    await broker.resume();
    await conn.waitUntilOnline(5000);

    expect(events).toEqual(['online#1', 'offline', 'online#2']);
    const warnings = lines.filter((l) => l.level === 40).map((l) => l.msg);
    expect(warnings.filter((m) => m.includes('lost'))).toHaveLength(1);
    expect(warnings.filter((m) => m.includes('cannot connect')).length).toBeLessThanOrEqual(1);
    const attempts = lines.filter((l) => l.msg === 'MQTT connect attempt failed').length;
    expect(attempts).toBeGreaterThanOrEqual(3);
    expect(lines.filter((l) => l.msg === 'connected to MQTT broker')).toHaveLength(2);

    // Subscriptions come back after the reconnect.
    const sub = await subscriber(broker.url, 'ast/st-r/status');
    cleanups.push(() => sub.client.endAsync());
    await sub.client.publishAsync('ast/st-r/echo', 'again', { qos: 1 });
    await until('resubscribed', () => got.includes('again'));
  }, 20_000);

  it('connects with TLS (CA, client certificate) and a username/password; a missing file is named', async () => {
    const pki = makeTestPki();
    const dir = pki.dir;
    execFileSync('mosquitto_passwd', ['-b', '-c', join(dir, 'passwd'), 'edge', 's3cret'], { stdio: 'pipe' });
    const port = await freePort();
    const secure = await TestBroker.start([
      `listener ${port} 127.0.0.1`,
      `cafile ${dir}/ca.crt`,
      `certfile ${dir}/server.crt`,
      `keyfile ${dir}/server.key`,
      'require_certificate true',
      `password_file ${dir}/passwd`,
      'per_listener_settings false',
    ]);
    cleanups.push(() => secure.stop());
    const url = `mqtts://127.0.0.1:${port}`;
    const tls = { ca: join(dir, 'ca.crt'), cert: join(dir, 'client.crt'), key: join(dir, 'client.key'), rejectUnauthorized: true };

    await expect(
      MqttConnection.create({ mqtt: testMqttConfig(url, { tls: { ...tls, ca: join(dir, 'nope.crt') } }), station: 's', identity: IDENTITY, logger: silent }),
    ).rejects.toThrow(`mqtt.tls.ca: cannot read ${join(dir, 'nope.crt')} (ENOENT)`);
    await expect(MqttConnection.create({ mqtt: testMqttConfig(`mqtt://127.0.0.1:${port}`, { tls }), station: 's', identity: IDENTITY, logger: silent })).rejects.toThrow(
      /not mqtts/,
    );

    // The password from the environment wins over the file's.
    const conn = await MqttConnection.create({
      mqtt: testMqttConfig(url, { tls, username: 'edge', password: 'wrong' }),
      station: 'st-tls',
      identity: IDENTITY,
      logger: silent,
      env: { AST_EDGE_MQTT_PASSWORD: 's3cret' },
    });
    cleanups.push(() => conn.stop());
    conn.start();
    await conn.waitUntilOnline(5000);
    expect(conn.protocolVersion).toBe(5);

    const { logger, lines } = capturingLogger();
    const refused = await MqttConnection.create({
      mqtt: testMqttConfig(url, { tls, username: 'edge', password: 'wrong' }),
      station: 'st-tls2',
      identity: IDENTITY,
      logger,
      env: {},
      backoff: { initialMs: 50, maxMs: 100 },
    });
    cleanups.push(() => refused.stop());
    refused.start();
    await expect(refused.waitUntilOnline(1000)).rejects.toThrow(/not connected.*(Bad User Name or Password|Not authorized)/i);
    expect(lines.filter((l) => l.msg.includes('cannot connect'))).toHaveLength(1);
  }, 30_000);
});

describe('EmbeddedBroker', () => {
  it('starts on a port, serves clients, stops cleanly and frees the port', async () => {
    const port = await freePort();
    const first = await EmbeddedBroker.start({ port });
    expect(first.url).toBe(`mqtt://127.0.0.1:${port}`);
    const client = await connectAsync(first.url, { protocolVersion: 4, reconnectPeriod: 0 });
    expect(first.connectedClients).toBe(1);
    await expect(EmbeddedBroker.start({ port })).rejects.toThrow(/in use/);
    await first.stop();
    await until('client closed', () => !client.connected);
    await client.endAsync(true);
    const second = await EmbeddedBroker.start({ port });
    await second.stop();
  });
});
