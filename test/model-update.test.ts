/**
 * Remote model updates on a running agent, over a real Mosquitto broker: signed bundles delivered by URL
 * (a local HTTP server) and in MQTT chunks, installed while inspections run; every kind of bad update
 * refused with its reason while the old model keeps inspecting; rollback by command; and the agent process
 * killed with SIGKILL at each step of an install, then restarted on a complete, verified model.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Agent } from '../src/agent/agent.js';
import { packBundle } from '../src/bundle/bundle-store.js';
import { generateKeyPair, signBundle } from '../src/bundle/signing.js';
import { runAgent } from '../src/cli/run-command.js';
import { AgentConfigSchema } from '../src/config/agent-schema.js';
import type { InspectionRecord } from '../src/config/result-schema.js';
import { silentLogger, tempDir, writeAgentBundle, writeDepthBundle, writeRgbdFrames, writeYaml } from './helpers/agent-bundle.js';
import { TINY, writeTinyBundle } from './helpers/tiny-bundle.js';
import { TestBroker } from './support/mosquitto.js';
import { makeTestPki, type TestPki } from './support/tls.js';
import { until } from './support/wait.js';

const BIN = join(import.meta.dirname, '..', 'bin', 'ast-agent.js');

let broker: TestBroker;
let http: Server;
let baseUrl: string;
/** The same bundles over https, certified by a private CA (pki.ca). */
let https: Server;
let httpsUrl: string;
let pki: TestPki;
let work: string;
let keys: { trusted: string; trustedKey: string; rogueKey: string };
const tars: Record<string, string> = {};

/** A bundle folder signed with `key` and packed; served as /<name>.tar. */
async function publishBundle(name: string, dir: string, key: string): Promise<string> {
  await signBundle(dir, key);
  const tar = join(work, `${name}.tar`);
  await packBundle(dir, tar);
  tars[name] = tar;
  return tar;
}

beforeAll(async () => {
  work = await tempDir('updates');
  const good = await generateKeyPair(join(work, 'keys'), 'line');
  const rogue = await generateKeyPair(join(work, 'keys'), 'rogue');
  keys = { trusted: good.publicKeyFile, trustedKey: good.privateKeyFile, rogueKey: rogue.privateKeyFile };
  broker = await TestBroker.start();

  await writeAgentBundle(join(work, 'a'), { id: 'model-a', version: '1.0.0', golden: true });
  await writeAgentBundle(join(work, 'b'), { id: 'model-b', version: '2.0.0', golden: true });
  await publishBundle('b', join(work, 'b'), keys.trustedKey);
  await writeAgentBundle(join(work, 'rogue'), { id: 'model-r', version: '9.0.0', golden: true });
  await publishBundle('rogue', join(work, 'rogue'), keys.rogueKey);
  // Tampered: a weight file changed after signing (the manifest's sha256 no longer matches).
  await cp(join(work, 'b'), join(work, 'tampered'), { recursive: true });
  const weights = join(work, 'tampered', 'weights.safetensors');
  const bytes = await readFile(weights);
  bytes[bytes.length - 1] ^= 0xff;
  await writeFile(weights, bytes);
  tars.tampered = join(work, 'tampered.tar');
  await (await import('tar')).c({ file: tars.tampered, cwd: join(work, 'tampered'), portable: true }, ['manifest.json', 'signature.json', ...Object.keys(JSON.parse(await readFile(join(work, 'b', 'manifest.json'), 'utf8')).files)]);
  // Self-test failure: golden scores that the graph does not reproduce.
  await writeAgentBundle(join(work, 'liar'), { id: 'model-l', version: '3.0.0', golden: true });
  const liarManifest = JSON.parse(await readFile(join(work, 'liar', 'manifest.json'), 'utf8'));
  liarManifest.golden.scores = liarManifest.golden.scores.map((s: number) => s + 1);
  await writeFile(join(work, 'liar', 'manifest.json'), JSON.stringify(liarManifest, null, 2));
  await publishBundle('liar', join(work, 'liar'), keys.trustedKey);
  // Incompatible: a depth model for an RGB station.
  await writeTinyBundle(join(work, 'depth'), 'depth', 'model-d');
  await publishBundle('depth', join(work, 'depth'), keys.trustedKey);
  // Depth models with golden samples (prepared depth), for a depth station; and one whose scores lie.
  await writeDepthBundle(join(work, 'depth-a'), 'depth-a', '1.0.0');
  await publishBundle('depth-b', await writeDepthBundle(join(work, 'depth-b'), 'depth-b', '2.0.0'), keys.trustedKey);
  await writeDepthBundle(join(work, 'depth-liar'), 'depth-liar', '3.0.0');
  const depthLiar = JSON.parse(await readFile(join(work, 'depth-liar', 'manifest.json'), 'utf8'));
  depthLiar.golden.scores = depthLiar.golden.scores.map((x: number) => x * 1.5 + 1);
  await writeFile(join(work, 'depth-liar', 'manifest.json'), JSON.stringify(depthLiar, null, 2));
  await publishBundle('depth-liar', join(work, 'depth-liar'), keys.trustedKey);
  // Bad manifest: valid signature over a manifest that is not a valid bundle manifest.
  await cp(join(work, 'b'), join(work, 'badmanifest'), { recursive: true });
  const bad = JSON.parse(await readFile(join(work, 'b', 'manifest.json'), 'utf8'));
  bad.input.width = 'wide';
  const badBytes = Buffer.from(JSON.stringify(bad));
  await writeFile(join(work, 'badmanifest', 'manifest.json'), badBytes);
  const { sign, createPrivateKey } = await import('node:crypto');
  const sig = JSON.parse(await readFile(join(work, 'b', 'signature.json'), 'utf8'));
  sig.manifestSha256 = createHash('sha256').update(badBytes).digest('hex');
  sig.signature = sign(null, badBytes, createPrivateKey(await readFile(keys.trustedKey))).toString('base64');
  await writeFile(join(work, 'badmanifest', 'signature.json'), JSON.stringify(sig));
  tars.badmanifest = join(work, 'badmanifest.tar');
  await (await import('tar')).c({ file: tars.badmanifest, cwd: join(work, 'badmanifest'), portable: true }, ['manifest.json', 'signature.json', 'weights.safetensors']);

  const serveBundle = async (req: IncomingMessage, res: ServerResponse) => {
    const name = (req.url ?? '').replace(/^\//, '').replace(/\.tar$/, '');
    if (name === 'truncated') {
      // Announces the whole bundle and sends half of it.
      const full = await readFile(tars.b!);
      res.writeHead(200, { 'content-length': String(full.length) });
      res.write(full.subarray(0, full.length >> 1));
      res.destroy();
      return;
    }
    const file = tars[name];
    if (!file) return void res.writeHead(404).end();
    const body = await readFile(file);
    res.writeHead(200, { 'content-length': String(body.length), 'content-type': 'application/x-tar' }).end(body);
  };
  http = createServer(serveBundle);
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  baseUrl = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  pki = makeTestPki();
  https = createHttpsServer({ cert: await readFile(pki.serverCert), key: await readFile(pki.serverKey) }, serveBundle);
  await new Promise<void>((r) => https.listen(0, '127.0.0.1', r));
  httpsUrl = `https://127.0.0.1:${(https.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await broker?.stop();
  for (const server of [http, https]) {
    server?.closeAllConnections();
    await new Promise((r) => server?.close(r));
  }
  if (pki) await rm(pki.dir, { recursive: true, force: true });
});

interface Station {
  agent: Agent;
  client: MqttClient;
  results: InspectionRecord[];
  responses: Record<string, unknown>[];
  command(name: string, body: Record<string, unknown>): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

let stationCount = 0;
async function startStation(updates: Record<string, unknown> = {}, station_: { source?: Record<string, unknown>; bundle?: string } = {}): Promise<Station> {
  const station = `up${++stationCount}`;
  const config = AgentConfigSchema.parse({
    station,
    source: station_.source ?? { kind: 'test', pattern: 'ball', fps: 8 },
    model: { bundle: station_.bundle ?? join(work, 'a'), intraOpThreads: 1 },
    mqtt: { url: broker.url, metricsIntervalS: 0 },
    http: { port: 0, host: '127.0.0.1' },
    stateDir: await tempDir('update-state'),
    updates: { trustedKeys: [keys.trusted], probation: { inspections: 0 }, ...updates },
  });
  const agent = await runAgent(config, 'test', silentLogger);
  const client = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
  const results: InspectionRecord[] = [];
  const responses: Record<string, unknown>[] = [];
  client.on('message', (topic, payload) => {
    const body = JSON.parse(payload.toString());
    if (topic.endsWith('/result')) results.push(body);
    else responses.push({ topic, ...body });
  });
  await client.subscribeAsync([`ast/${station}/result`, `ast/${station}/cmd/+/response`], { qos: 1 });
  let tx = 0;
  return {
    agent,
    client,
    results,
    responses,
    async command(name, body) {
      const transaction = `t${++tx}`;
      await client.publishAsync(`ast/${station}/cmd/${name}`, JSON.stringify({ ...body, transaction }), { qos: 1 });
      return until(`${name} response`, () => responses.find((r) => r.transaction === transaction && r.final !== false && r.topic === `ast/${station}/cmd/${name}/response`), 90_000);
    },
    async stop() {
      await client.endAsync();
      await agent.stop();
    },
  };
}

const modelsAfter = (s: Station, from: number) => new Set(s.results.slice(from).map((r) => r.model.id));

describe('signed updates on a running agent', () => {
  it('self-tests a depth model on its golden depth samples: a faithful one installs, one whose scores differ is refused', async () => {
    const frames = await writeRgbdFrames(join(work, 'rgbd-frames'), 4, TINY.w * 8, TINY.h * 8);
    const s = await startStation(
      {},
      {
        bundle: join(work, 'depth-a'),
        source: {
          kind: 'file', path: frames.rgb, loop: true, fps: 8,
          depth: { kind: 'file', path: frames.depth, loop: true, fps: 8, pairBy: 'order', metresPerUnit: 0.001 },
        },
      },
    );
    await until('inspections with depth-a', () => s.results.length >= 3, 20_000);
    const liar = await s.command('model-update', { url: `${baseUrl}/depth-liar.tar` });
    expect(liar).toMatchObject({ ok: false });
    expect(String(liar.error)).toMatch(/^golden sample 0 scored .*, expected .* \(error .* > tolerance 0\.001\)$/);
    const good = await s.command('model-update', { url: `${baseUrl}/depth-b.tar` });
    expect(good, JSON.stringify(good)).toMatchObject({ ok: true, model: { id: 'depth-b', version: '2.0.0' } });
    const steps = s.responses.filter((r) => r.final === false && r.transaction === 't2').map((r) => r.step);
    expect(steps).toContain('self-test');
    const at = s.results.length;
    await until('results from depth-b', () => s.results.slice(at).some((r) => r.model.id === 'depth-b'), 20_000);
    expect(s.results.every((r) => r.verdict !== 'error')).toBe(true);
    await s.stop();
  }, 90_000);

  it("downloads over https from a server certified by updates.caFile; without it, or with a missing file, the update is refused by name", async () => {
    const trusting = await startStation({ caFile: pki.ca });
    await until('inspections', () => trusting.results.length >= 2, 20_000);
    expect(await trusting.command('model-update', { url: `${httpsUrl}/b.tar` })).toMatchObject({ ok: true, model: { id: 'model-b' } });
    await trusting.stop();

    const systemCas = await startStation();
    const refusedTls = await systemCas.command('model-update', { url: `${httpsUrl}/b.tar` });
    expect(refusedTls).toMatchObject({ ok: false });
    expect(String(refusedTls.error)).toMatch(/self[- ]signed certificate|unable to (get|verify)/i);
    await systemCas.stop();

    const missing = join(work, 'no-such-ca.pem');
    const misconfigured = await startStation({ caFile: missing });
    const refusedFile = await misconfigured.command('model-update', { url: `${httpsUrl}/b.tar` });
    expect(refusedFile).toMatchObject({ ok: false });
    expect(String(refusedFile.error)).toContain(`updates.caFile: cannot read ${missing} (ENOENT)`);
    const at = misconfigured.results.length;
    await until('still inspecting with model-a', () => misconfigured.results.length > at + 1, 20_000);
    expect(modelsAfter(misconfigured, at)).toEqual(new Set(['model-a']));
    await misconfigured.stop();
  }, 120_000);

  it('installs a signed bundle from a URL between inspections, reports progress, and results show the new version', async () => {
    const s = await startStation();
    await until('inspections with model-a', () => s.results.length >= 3, 20_000);
    const response = await s.command('model-update', { url: `${baseUrl}/b.tar` });
    expect(response, JSON.stringify(response)).toMatchObject({ ok: true, model: { id: 'model-b', version: '2.0.0' } });
    const steps = s.responses.filter((r) => r.final === false).map((r) => r.step);
    expect(steps).toEqual(['receiving', 'staging', 'checking', 'loading', 'self-test', 'activating', 'done']);
    const at = s.results.length;
    await until('results from model-b', () => s.results.slice(at).some((r) => r.model.id === 'model-b'), 20_000);
    const seqs = s.results.map((r) => r.seq);
    expect(new Set(seqs).size).toBe(seqs.length);
    expect(s.results.every((r) => r.verdict !== 'error')).toBe(true);
    // Rollback by command: back to model-a.
    const back = await s.command('model-rollback', {});
    expect(back).toMatchObject({ ok: true, model: { id: 'model-a', version: '1.0.0' } });
    const at2 = s.results.length;
    await until('results from model-a again', () => s.results.length > at2 + 2, 20_000);
    expect([...modelsAfter(s, at2 + 1)]).toEqual(['model-a']);
    await s.stop();
  });

  it('installs a bundle sent in MQTT chunks, out of order and with a duplicate', async () => {
    const s = await startStation();
    await until('inspections', () => s.results.length >= 2, 20_000);
    const tar = await readFile(tars.b!);
    const chunkBytes = 256 * 1024;
    const count = Math.ceil(tar.length / chunkBytes);
    const totalSha256 = createHash('sha256').update(tar).digest('hex');
    const order = [...Array(count).keys()].reverse();
    order.splice(1, 0, order[0]!);
    let last: Record<string, unknown> = {};
    for (const index of order) {
      const data = tar.subarray(index * chunkBytes, Math.min(tar.length, (index + 1) * chunkBytes));
      last = await s.command('model-chunk', {
        transferId: 'xfer-1', index, count, chunkBytes, totalBytes: tar.length, totalSha256,
        sha256: createHash('sha256').update(data).digest('hex'), data: data.toString('base64'),
      });
      expect(last.ok).toBe(true);
    }
    expect(last).toMatchObject({ status: 'complete', transferId: 'xfer-1' });
    await until('install finished', () => s.responses.some((r) => r.transaction === 'xfer-1' && r.step === 'done'), 60_000);
    const at = s.results.length;
    await until('results from model-b', () => s.results.slice(at).some((r) => r.model.id === 'model-b'), 20_000);
    await s.stop();
  });

  it('refuses every bad update with a reason while the old model keeps inspecting', async () => {
    const s = await startStation();
    await until('inspections', () => s.results.length >= 2, 20_000);
    const cases: [string, RegExp][] = [
      ['tampered', /weights\.safetensors.*(sha256|bytes)/],
      ['rogue', /signed by key [0-9a-f]{16}, which is not trusted/],
      ['truncated', /truncat|ended after|closed/i],
      ['badmanifest', /input\.width/],
      ['depth', /^model model-d runs in depth mode and needs a depth stream, which this station does not have$/],
      ['liar', /golden sample 0 scored .* expected/],
      ['missing', /404/],
    ];
    for (const [name, reason] of cases) {
      const before = s.results.length;
      const r = await s.command('model-update', { url: `${baseUrl}/${name}.tar` });
      expect(r.ok, name).toBe(false);
      expect(String(r.error), name).toMatch(reason);
      await until(`inspections after refusing ${name}`, () => s.results.length > before + 1, 20_000);
      expect([...modelsAfter(s, before)], name).toEqual(['model-a']);
    }
    const status = await s.command('status', {});
    expect((status.health as { update: { active: string | null } }).update.active).toMatch(/^model-a@1\.0\.0-/);
    expect(s.results.every((r) => r.verdict !== 'error')).toBe(true);
    await s.stop();
  });

  it('rolls back automatically when the new model fails its probation', async () => {
    const config = AgentConfigSchema.parse({
      station: 'probation',
      source: { kind: 'test', pattern: 'ball', fps: 8 },
      model: { bundle: join(work, 'a'), intraOpThreads: 1 },
      mqtt: { url: broker.url, metricsIntervalS: 0 },
      http: { port: 0, host: '127.0.0.1' },
      stateDir: await tempDir('update-state'),
      // model-b's calibration says good parts score about 0.5 ± 0.25; anything shifted beyond 0.01 deviations fails.
      updates: { trustedKeys: [keys.trusted], probation: { inspections: 3, maxScoreShift: 0.01 } },
    });
    const records: InspectionRecord[] = [];
    const agent = await runAgent(config, 'test', silentLogger, { sinks: [{ name: 't', start: async () => {}, stop: async () => {}, publish: (o) => void records.push(o.record) }] });
    await until('inspections', () => records.length >= 2, 20_000);
    await agent.updater.installFromUrl(agent, `${baseUrl}/b.tar`, undefined, () => {});
    await until('rollback', () => agent.updater.state.last?.outcome === 'rolled-back', 30_000);
    const at = records.length;
    await until('inspections after rollback', () => records.length > at + 2, 20_000);
    expect([...new Set(records.slice(at + 1).map((r) => r.model.id))]).toEqual(['model-a']);
    expect(agent.updater.state.last?.reason).toMatch(/probation failed: median score/);
    await agent.stop();
  });
});

describe('power cut during an install', () => {
  const points = ['stage:copying', 'stage:verified', 'commit:after-rename', 'activate:before-write', 'activate:after-write'];
  it.each(points)('kill -9 at %s, restart: the agent runs a complete, verified model', async (point) => {
    const dir = await tempDir('kill');
    const station = `kill-${point.replace(/[:]/g, '-')}`;
    const config = await writeYaml(
      join(dir, 'agent.yaml'),
      [
        `station: ${station}`,
        'source: { kind: test, fps: 5 }',
        `model: { bundle: ${JSON.stringify(join(work, 'a'))}, intraOpThreads: 1 }`,
        `mqtt: { url: ${JSON.stringify(broker.url)}, metricsIntervalS: 0 }`,
        'http: { port: 0, host: 127.0.0.1 }',
        'stateDir: ./state',
        `updates: { trustedKeys: [${JSON.stringify(keys.trusted)}], probation: { inspections: 0 } }`,
        '',
      ].join('\n'),
    );
    const client = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
    const results: InspectionRecord[] = [];
    client.on('message', (topic, payload) => {
      if (topic.endsWith('/result')) results.push(JSON.parse(payload.toString()));
    });
    await client.subscribeAsync(`ast/${station}/result`, { qos: 1 });
    const start = (env: Record<string, string>) => {
      const child = spawn(process.execPath, [BIN, 'run', '--config', config], { env: { ...process.env, ...env } });
      const out = { stderr: '' };
      child.stderr.on('data', (d: Buffer) => (out.stderr += d.toString()));
      return { child, out };
    };
    // A first run imports the configured model into the store (that import is itself a staging).
    const setup = start({});
    await until('inspections of the first run', () => results.length >= 1, 60_000);
    const setupDone = new Promise((r) => setup.child.once('exit', r));
    setup.child.kill('SIGTERM');
    await setupDone;
    const first = start({ AST_EDGE_TEST_PAUSE_AT: point });
    const already = results.length;
    await until('first inspections', () => results.length > already, 60_000);
    await client.publishAsync(`ast/${station}/cmd/model-update`, JSON.stringify({ url: `${baseUrl}/b.tar` }), { qos: 1 });
    await until(`pause at ${point}`, () => first.out.stderr.includes(`AST_EDGE_TEST_PAUSED ${point}`), 60_000);
    const exited = new Promise((r) => first.child.once('exit', r));
    first.child.kill('SIGKILL');
    await exited;

    const second = start({});
    const before = results.length;
    await until('inspections after restart', () => results.length >= before + 2, 60_000);
    const stopped = new Promise((r) => second.child.once('exit', r));
    second.child.kill('SIGTERM');
    await stopped;
    await client.endAsync();
    const model = results[results.length - 1]!.model.id;
    // Before the active pointer is written the old model runs; after it, the new one — never anything else.
    expect(model).toBe(point === 'activate:after-write' ? 'model-b' : 'model-a');
    expect(results.slice(before).every((r) => r.verdict !== 'error')).toBe(true);
  });
});
