/**
 * `ast-agent run` as a process: a bad configuration is refused before anything starts, with every problem
 * named; a good one starts, tells systemd it is ready (a real notify socket), serves health, and stops
 * cleanly on SIGTERM within the shutdown bound.
 */
import { execFile, spawn } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir, writeAgentBundle, writeDepthBundle, writeYaml } from './helpers/agent-bundle.js';
import { AgentProcess } from './helpers/agent-process.js';

const run = promisify(execFile);
const BIN = join(import.meta.dirname, '..', 'bin', 'ast-agent.js');

let bundle: string;
beforeAll(async () => {
  bundle = await writeAgentBundle(await tempDir('cli-bundle'), { id: 'cli-model' });
});

describe('ast-agent run', () => {
  it("sizes libuv's thread pool for the cameras before anything uses it; an operator's own UV_THREADPOOL_SIZE wins", async () => {
    const dir = await tempDir('cli-pool');
    const depthBundle = await writeDepthBundle(join(dir, 'bundle'), 'pool-depth');
    const { freePort } = await import('./support/mosquitto.js');
    const config = await writeYaml(
      join(dir, 'agent.yaml'),
      [
        'station: pool-1',
        // Two GStreamer pipelines (colour and depth): about four pool threads held, more than Node's default pool.
        'source: { kind: test, fps: 5, depth: { kind: test, fps: 5 } }',
        `model: { bundle: ${JSON.stringify(depthBundle)}, intraOpThreads: 1 }`,
        `mqtt: { embeddedPort: ${await freePort()}, metricsIntervalS: 0 }`,
        'http: { port: 0, host: 127.0.0.1 }',
        'stateDir: ./state',
        '',
      ].join('\n'),
    );
    const advice = /^UV_THREADPOOL_SIZE is \d+: 2 GStreamer pipeline/;
    const sized = AgentProcess.start(config, { env: { UV_THREADPOOL_SIZE: undefined } });
    await sized.ready();
    await sized.stop();
    expect(sized.messages(advice)).toEqual([]);
    const small = AgentProcess.start(config, { env: { UV_THREADPOOL_SIZE: '4' } });
    await small.ready();
    await small.stop();
    expect(small.messages(advice).map((l) => l.msg)).toEqual([expect.stringContaining('UV_THREADPOOL_SIZE is 4: 2 GStreamer pipeline(s)')]);
  }, 60_000);

  it('refuses a bad configuration with every problem, its path and line, and starts nothing', async () => {
    const dir = await tempDir('cli-config');
    const file = await writeYaml(
      join(dir, 'bad.yaml'),
      ['station: line 1', 'source:', '  kind: rtsp', '  url: http://camera/stream', 'model:', '  bundle: ./m', 'inspection:', '  deadlineMs: -5', 'colour: red', ''].join('\n'),
    );
    const err = await run(process.execPath, [BIN, 'run', '--config', file]).then(
      () => null,
      (e: { code: number; stderr: string }) => e,
    );
    expect(err?.code).toBe(2);
    expect(err!.stderr).toBe(
      [
        `ast-agent: cannot load agent configuration ${file}:`,
        '  station: must be letters, digits, ".", "_" or "-" (it is an MQTT topic level) (line 1)',
        '  source.url: must start with rtsp:// or rtsps:// (line 4)',
        '  inspection.deadlineMs: must be at least 1, got -5 (line 8)',
        '  colour: unknown key (line 9)',
        '',
      ].join('\n'),
    );
  });

  it('starts, reports READY to systemd, serves /healthz, and exits 0 on SIGTERM within the bound', async () => {
    const dir = await tempDir('cli-run');
    const { freePort } = await import('./support/mosquitto.js');
    const [httpPort, mqttPort] = [await freePort(), await freePort()];
    const config = await writeYaml(
      join(dir, 'agent.yaml'),
      [
        'station: cli-1',
        'source: { kind: test, fps: 10 }',
        `model: { bundle: ${JSON.stringify(bundle)}, intraOpThreads: 1 }`,
        `mqtt: { embeddedPort: ${mqttPort}, metricsIntervalS: 0 }`,
        `http: { port: ${httpPort}, host: 127.0.0.1 }`,
        'stateDir: ./state',
        '',
      ].join('\n'),
    );
    // A real sd_notify socket: a python3 listener prints every datagram it receives.
    const socket = join(dir, 'notify.sock');
    const listener = spawn('python3', [
      '-u',
      '-c',
      `import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nprint('listening',flush=True)\nwhile True:\n  print(s.recv(4096).decode().replace('\\n','|'),flush=True)`,
      socket,
    ]);
    let notes = '';
    listener.stdout.on('data', (d: Buffer) => (notes += d.toString()));
    while (!notes.includes('listening')) await new Promise((r) => setTimeout(r, 20));

    const agent = spawn(process.execPath, [BIN, 'run', '--config', config], { env: { ...process.env, NOTIFY_SOCKET: socket, LOG_LEVEL: 'info' } });
    let stderr = '';
    agent.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<{ code: number | null; at: number }>((resolve) => agent.once('exit', (code) => resolve({ code, at: performance.now() })));
    const deadline = Date.now() + 60_000;
    while (!notes.includes('READY=1')) {
      if (Date.now() > deadline) throw new Error(`no READY=1; agent stderr:\n${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const health = (await (await fetch(`http://127.0.0.1:${httpPort}/healthz`)).json()) as { status: string; model: { id: string } };
    await new Promise((r) => setTimeout(r, 500));
    const signalledAt = performance.now();
    agent.kill('SIGTERM');
    const { code, at } = await exited;
    await new Promise((r) => setTimeout(r, 200));
    listener.kill();
    expect(health.model.id).toBe('cli-model');
    expect(['ok', 'degraded']).toContain(health.status);
    expect(notes).toMatch(/READY=1\|STATUS=inspecting: cli-model 1\.0\.0 on cpu/);
    expect(notes).toContain('STOPPING=1');
    expect(code).toBe(0);
    expect(at - signalledAt).toBeLessThan(10_000);
    expect(stderr).toContain('"msg":"agent stopped"');
  });
});
