/**
 * SystemdNotifier against a real unix datagram socket: a small python3 listener stands in for systemd
 * (binds the NOTIFY_SOCKET address, records each datagram with its sender's PID, and closes the file
 * descriptors systemd-notify passes with BARRIER=1, as systemd does once a message is processed).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, describe, expect, it } from 'vitest';
import { SystemdNotifier } from '../src/agent/systemd-notify.js';
import { freePort } from './support/mosquitto.js';

const LISTENER = String.raw`
import array, json, os, socket, sys
address = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\0" + address[1:] if address.startswith("@") else address)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
print("listening", flush=True)
while True:
    data, ancillary, _, _ = s.recvmsg(65536, socket.CMSG_SPACE(16 * 4) + socket.CMSG_SPACE(12))
    pid = None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % 4])
            for fd in fds:
                os.close(fd)
        elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = int.from_bytes(payload[:4], "little")
    print(json.dumps({"lines": data.decode().split("\n"), "pid": pid}), flush=True)
`;
import { sleep } from './support/wait.js';

interface Received {
  lines: string[];
  pid: number | null;
}

class Listener {
  /** Every datagram except systemd-notify's BARRIER=1 handshakes. */
  readonly messages: Received[] = [];
  private constructor(private readonly child: ChildProcess) {}

  static async start(address: string): Promise<Listener> {
    const child = spawn('python3', ['-c', LISTENER, address], { stdio: ['ignore', 'pipe', 'inherit'] });
    const listener = new Listener(child);
    const lines = createInterface({ input: child.stdout! });
    await new Promise<void>((ready, fail) => {
      child.once('error', fail);
      child.once('exit', (code) => fail(new Error(`listener exited with code ${code}`)));
      lines.on('line', (line) => {
        if (line === 'listening') return ready();
        const m = JSON.parse(line) as Received;
        if (!m.lines.includes('BARRIER=1')) listener.messages.push(m);
      });
    });
    return listener;
  }

  count(line: string): number {
    return this.messages.filter((m) => m.lines.includes(line)).length;
  }

  async waitFor(line: string, times = 1, timeoutMs = 5000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (this.count(line) < times) {
      if (Date.now() > until) throw new Error(`${line} received ${this.count(line)} times, expected ${times}`);
      await sleep(20);
    }
  }

  stop(): void {
    this.child.kill();
  }
}

const abstractAddress = () => `@ast-edge-test-${process.pid}-${randomBytes(4).toString('hex')}`;

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function listen(address = abstractAddress()): Promise<{ listener: Listener; address: string }> {
  const listener = await Listener.start(address);
  cleanup.push(() => listener.stop());
  return { listener, address };
}

function notifier(env: NodeJS.ProcessEnv, isHealthy?: () => boolean): SystemdNotifier {
  const n = new SystemdNotifier({ env: { PATH: process.env.PATH, ...env }, isHealthy });
  cleanup.push(() => n.close());
  return n;
}

describe('SystemdNotifier', () => {
  it('does nothing without NOTIFY_SOCKET', async () => {
    const n = notifier({ WATCHDOG_USEC: '1000000' });
    expect(n.enabled).toBe(false);
    expect(n.watchdogIntervalMs).toBeUndefined();
    expect(await n.ready('up')).toBe(false);
    expect(await n.watchdog()).toBe(false);
    expect(await n.stopping()).toBe(false);
  });

  it('sends READY, STATUS, WATCHDOG and STOPPING in order to an abstract socket', async () => {
    const { listener, address } = await listen();
    const n = notifier({ NOTIFY_SOCKET: address });
    expect(n.enabled).toBe(true);
    expect(await n.ready('inspecting on station-1')).toBe(true);
    expect(await n.status('camera reconnecting\nattempt 2')).toBe(true);
    expect(await n.watchdog()).toBe(true);
    expect(await n.extendTimeout(30_000)).toBe(true);
    expect(await n.stopping('shutting down')).toBe(true);
    await listener.waitFor('STOPPING=1');

    expect(listener.messages.map((m) => m.lines)).toEqual([
      [`MAINPID=${process.pid}`, 'READY=1', 'STATUS=inspecting on station-1'],
      ['STATUS=camera reconnecting attempt 2'],
      ['WATCHDOG=1'],
      ['EXTEND_TIMEOUT_USEC=30000000'],
      ['STOPPING=1', 'STATUS=shutting down'],
    ]);
    // systemd-notify sends with its parent's (the agent's) PID when it may, i.e. as root.
    if (process.getuid?.() === 0) expect(listener.messages.every((m) => m.pid === process.pid)).toBe(true);
  });

  it('sends to a socket path', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ast-notify-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const { listener, address } = await listen(join(dir, 'notify'));
    const n = notifier({ NOTIFY_SOCKET: address });
    expect(await n.ready()).toBe(true);
    expect(listener.messages.map((m) => m.lines)).toEqual([[`MAINPID=${process.pid}`, 'READY=1']]);
  });

  it('pings at half WATCHDOG_USEC only while the agent is healthy', async () => {
    const { listener, address } = await listen();
    let healthy = false;
    const n = notifier({ NOTIFY_SOCKET: address, WATCHDOG_USEC: '200000', WATCHDOG_PID: String(process.pid) }, () => healthy);
    expect(n.watchdogIntervalMs).toBe(100);

    await n.ready();
    await sleep(700);
    expect(listener.count('WATCHDOG=1')).toBe(0);

    healthy = true;
    await listener.waitFor('WATCHDOG=1', 3);

    healthy = false;
    await sleep(300); // a ping already on its way may still land
    const afterWedge = listener.count('WATCHDOG=1');
    await sleep(700);
    expect(listener.count('WATCHDOG=1')).toBe(afterWedge);

    healthy = true;
    await listener.waitFor('WATCHDOG=1', afterWedge + 1);
    await n.stopping();
    await sleep(300);
    const atStop = listener.count('WATCHDOG=1');
    await sleep(500);
    expect(listener.count('WATCHDOG=1')).toBe(atStop);
    expect(listener.messages.at(-1)?.lines).toEqual(['STOPPING=1']);
  });

  it('counts a crashing health check as unhealthy', async () => {
    const { listener, address } = await listen();
    const n = notifier({ NOTIFY_SOCKET: address, WATCHDOG_USEC: '100000' }, () => {
      throw new Error('wedged');
    });
    await n.ready();
    await sleep(500);
    expect(listener.count('WATCHDOG=1')).toBe(0);
  });

  it('leaves a watchdog meant for another process alone', () => {
    const n = notifier({ NOTIFY_SOCKET: abstractAddress(), WATCHDOG_USEC: '1000000', WATCHDOG_PID: String(process.pid + 1) });
    expect(n.enabled).toBe(true);
    expect(n.watchdogIntervalMs).toBeUndefined();
  });

  it('warns when systemd-notify is too old to wait for systemd (before 246)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ast-notify-old-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const fake = join(dir, 'systemd-notify');
    await writeFile(fake, '#!/bin/sh\n[ "$1" = --version ] && echo "systemd 245 (245.4-4ubuntu3)"\nexit 0\n', { mode: 0o755 });
    const warnings: string[] = [];
    const n = new SystemdNotifier({
      env: { NOTIFY_SOCKET: abstractAddress() },
      command: fake,
      logger: { warn: (...args: unknown[]) => void warnings.push(String(args.at(-1))), debug: () => {} },
    });
    expect(await n.ready()).toBe(true);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^.*systemd-notify is from systemd 245, which does not wait for systemd to take a message/);
  });

  it('reports a missing helper as not sent, without throwing', async () => {
    const warnings: string[] = [];
    const n = new SystemdNotifier({
      env: { NOTIFY_SOCKET: abstractAddress() },
      command: '/nonexistent/systemd-notify',
      logger: { warn: (...args: unknown[]) => void warnings.push(String(args.at(-1))), debug: () => {} },
    });
    expect(await n.status('x')).toBe(false);
    expect(warnings).toEqual(['systemd notification not sent: cannot run /nonexistent/systemd-notify']);
  });
});

const ROOT = resolve(import.meta.dirname, '..');
const hasCommand = (name: string) => spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;

describe('deploy/ast-edge.service', () => {
  it('starts the agent entry point the repository has', async () => {
    const unit = await readFile(join(ROOT, 'deploy/ast-edge.service'), 'utf8');
    expect(unit).toMatch(/^ExecStart=\/opt\/ast-edge\/bin\/ast-agent\.js run --config \/etc\/ast-edge\/config\.yaml$/m);
    expect(spawnSync('test', ['-x', join(ROOT, 'bin/ast-agent.js')]).status).toBe(0);
    expect(unit).toMatch(/^Type=notify$/m);
    expect(unit).toMatch(/^NotifyAccess=all$/m);
  });

  it('passes systemd-analyze verify without a warning', async (ctx) => {
    if (!hasCommand('systemd-analyze')) return ctx.skip('systemd-analyze is not installed (Debian package systemd)');
    // The unit as installed, except that ExecStart points at this checkout (verify checks the file exists).
    const dir = await mkdtemp(join(tmpdir(), 'ast-unit-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const unit = (await readFile(join(ROOT, 'deploy/ast-edge.service'), 'utf8')).replaceAll('/opt/ast-edge/bin/', `${ROOT}/bin/`);
    await writeFile(join(dir, 'ast-edge.service'), unit);
    const verify = spawnSync('systemd-analyze', ['verify', join(dir, 'ast-edge.service')], { encoding: 'utf8' });
    expect(verify.stderr + verify.stdout).toBe('');
    expect(verify.status).toBe(0);

    const security = spawnSync('systemd-analyze', ['security', '--offline=yes', '--no-pager', join(dir, 'ast-edge.service')], { encoding: 'utf8' });
    const exposure = /Overall exposure level for ast-edge\.service: ([\d.]+)/.exec(security.stdout)?.[1];
    if (exposure !== undefined) expect(Number(exposure)).toBeLessThan(5);
  });
});

describe('deploy/install.sh', () => {
  it('--dry-run prints the steps and changes nothing', () => {
    const before = ['/etc/ast-edge', '/opt/ast-edge', '/etc/systemd/system/ast-edge.service'].map(existsSync);
    const run = spawnSync('bash', [join(ROOT, 'deploy/install.sh'), '--dry-run', '--no-start'], { encoding: 'utf8' });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/^install: (installing unit|unit) \/etc\/systemd\/system\/ast-edge\.service/m);
    expect(run.stdout).toMatch(/^install: (installing|keeping existing) \/etc\/ast-edge\/config\.yaml/m);
    expect(run.stdout).toMatch(/^\+ mv \/opt\/ast-edge\.new \/opt\/ast-edge$/m);
    expect(run.stdout).not.toMatch(/^\+ systemctl/m);
    expect(['/etc/ast-edge', '/opt/ast-edge', '/etc/systemd/system/ast-edge.service'].map(existsSync)).toEqual(before);
  });

  it('refuses an unknown option', () => {
    const run = spawnSync('bash', [join(ROOT, 'deploy/install.sh'), '--dry-run', '--frobnicate'], { encoding: 'utf8' });
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(/^install: unknown option --frobnicate$/m);
  });
});

describe('deploy/mosquitto.conf.example', () => {
  it('is a configuration Mosquitto starts with', async (ctx) => {
    const mosquitto = process.env.MOSQUITTO_BIN ?? '/usr/sbin/mosquitto';
    if (!existsSync(mosquitto)) return ctx.skip('mosquitto is not installed');
    const dir = await mkdtemp(join(tmpdir(), 'ast-mosquitto-example-'));
    // Same file, on a loopback port of our own, persisting into the temp folder, logging to stderr.
    const port = await freePort();
    const conf = (await readFile(join(ROOT, 'deploy/mosquitto.conf.example'), 'utf8'))
      .replace(/^listener 1883$/m, `listener ${port} 127.0.0.1`)
      .replace(/^persistence_location .*$/m, `persistence_location ${dir}/`)
      .replace(/^pid_file .*$/m, '')
      .replace(/^log_dest .*$/m, 'log_dest stderr');
    await writeFile(join(dir, 'mosquitto.conf'), `${conf}\nuser ${userInfo().username}\n`);
    const broker = spawn(mosquitto, ['-c', join(dir, 'mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
    // The broker writes its persistence file as it exits: the folder goes only after it has.
    cleanup.push(async () => {
      const exited = broker.exitCode === null ? new Promise((r) => broker.once('exit', r)) : Promise.resolve();
      broker.kill();
      await exited;
      await rm(dir, { recursive: true, force: true });
    });
    let log = '';
    broker.stderr!.setEncoding('utf8').on('data', (chunk: string) => (log += chunk));
    const accepts = () =>
      new Promise<boolean>((done) => {
        const socket = connect(port, '127.0.0.1', () => done(!!socket.destroy()));
        socket.once('error', () => done(false));
      });
    const until = Date.now() + 5000;
    while (broker.exitCode === null && Date.now() < until && !(await accepts())) await sleep(25);
    expect(log).not.toMatch(/Error/);
    expect(broker.exitCode).toBeNull();
    expect(await accepts()).toBe(true);
  });
});
