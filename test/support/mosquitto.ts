/**
 * A real Mosquitto broker for tests: started on a free loopback port with its own config and persistence
 * folder, stoppable and restartable on the same port (broker outages), killed when the test ends.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';

const MOSQUITTO = process.env.MOSQUITTO_BIN ?? '/usr/sbin/mosquitto';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`mosquitto did not listen on port ${port} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export class TestBroker {
  private child: ChildProcess | null = null;
  private log = '';
  private constructor(readonly port: number, readonly dir: string) {}

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /** `extraConfig` lines are appended to the generated mosquitto.conf (e.g. TLS listeners). */
  static async start(extraConfig: string[] = []): Promise<TestBroker> {
    const dir = mkdtempSync(join(tmpdir(), 'ast-mosquitto-'));
    const broker = new TestBroker(await freePort(), dir);
    writeFileSync(
      join(dir, 'mosquitto.conf'),
      [
        `listener ${broker.port} 127.0.0.1`,
        'allow_anonymous true',
        // Started as root, mosquitto would switch to user `mosquitto`, which cannot write our temp folder.
        `user ${userInfo().username}`,
        'persistence true',
        `persistence_location ${dir}/`,
        'log_dest stderr',
        'log_type error',
        'log_type warning',
        ...extraConfig,
      ].join('\n') + '\n',
    );
    await broker.resume();
    return broker;
  }

  /** (Re)starts the broker process on the same port. */
  async resume(): Promise<void> {
    if (this.child) return;
    const child = spawn(MOSQUITTO, ['-c', join(this.dir, 'mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr!.on('data', (d: Buffer) => { this.log += d.toString(); });
    child.once('exit', () => { if (this.child === child) this.child = null; });
    this.child = child;
    await waitForPort(this.port, 5000).catch((e: Error) => { throw new Error(`${e.message}\n${this.log}`); });
  }

  /** Stops the broker (SIGTERM: persistence is written, retained messages survive a resume). */
  async pause(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = null;
    await new Promise<void>((resolve) => { child.once('exit', () => resolve()); child.kill('SIGTERM'); });
  }

  async stop(): Promise<void> {
    await this.pause();
  }

  get stderr(): string {
    return this.log;
  }
}
