/**
 * systemd's notify protocol (sd_notify(3)) for `Type=notify` services: READY=1 once the agent inspects,
 * STATUS= lines for `systemctl status`, STOPPING=1 on the way out, and watchdog pings while the agent says
 * it is healthy. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
 *
 * How the datagrams get out. The protocol is one AF_UNIX SOCK_DGRAM datagram per message, to a path or an
 * abstract (`@…`) address, and Node cannot send one: `dgram` is UDP only, `net` is stream only. Tried:
 *  - npm addons. `unix-dgram` (what zigbee2mqtt uses) copies the address with strncpy, so abstract
 *    addresses fail (ECONNREFUSED, checked). `sd-notify` wraps libsystemd's sd_notify: it builds offline
 *    with node-gyp once Debian's libsystemd-dev is installed and sends from the agent's own PID, abstract
 *    addresses included (checked) — but it is a native build on every device, a dependency whose install
 *    script npm must be allowed to run, and libsystemd-dev on the device.
 *  - a long-lived socat or python3 helper: another package or runtime on the device for one socket.
 *  - `systemd-notify` (chosen): part of the `systemd` package itself, so present wherever NOTIFY_SOCKET
 *    can be set, and it speaks the protocol with systemd's own code (path, abstract and vsock addresses,
 *    credentials). It runs as a child, so the unit needs `NotifyAccess=all`. The known hazard of a
 *    short-lived sender — systemd finds the unit by the sender's PID, a sender already gone is not found,
 *    and the message is dropped — is handled by systemd-notify itself since systemd 246: by default it
 *    waits (BARRIER=1, up to 5 s) until systemd has processed the message (seen in the test listener).
 *    Debian 12 has systemd 252, Ubuntu 22.04 (JetPack 6) 249; Ubuntu 20.04 (JetPack 5, the last for
 *    Xavier) has 245, where messages can be lost: `ready()` logs a warning there, and `sd-notify` above
 *    is the way out. Run as root, systemd-notify also sends with the agent's PID as credentials (it uses
 *    its parent's by default), which removes the hazard altogether.
 * A spawn costs a few milliseconds; the agent sends a handful of messages plus a ping every
 * WatchdogSec/2, so that is cheap.
 */
import { spawn } from 'node:child_process';
import type { Logger } from 'pino';

export interface SystemdNotifierOptions {
  /** Where NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are read (default `process.env`). */
  env?: NodeJS.ProcessEnv;
  /**
   * Asked before every automatic watchdog ping. A wedged agent (camera loop stalled, detector stuck) must
   * answer false: pings stop, and systemd kills and restarts the service after WatchdogSec.
   */
  isHealthy?: () => boolean;
  logger?: Pick<Logger, 'warn' | 'debug'>;
  /** The helper program (default `systemd-notify` from PATH). */
  command?: string;
}

/** systemd-notify waits for systemd to process each message (barrier) from this version on. */
const FIRST_VERSION_WITH_BARRIER = 246;
/** systemd-notify's own barrier wait is 5 s; past this the helper is killed and the message counted lost. */
const HELPER_TIMEOUT_MS = 10_000;

export class SystemdNotifier {
  /** True when the process was started by systemd with a notification socket. */
  readonly enabled: boolean;
  /** Automatic ping interval (half of WATCHDOG_USEC); undefined when no watchdog applies to this process. */
  readonly watchdogIntervalMs: number | undefined;

  private readonly socket: string | undefined;
  private readonly path: string | undefined;
  private readonly command: string;
  private readonly isHealthy: () => boolean;
  private readonly logger: Pick<Logger, 'warn' | 'debug'> | undefined;
  /** Messages go out one after the other, in call order. */
  private queue: Promise<unknown> = Promise.resolve();
  private pingPending = false;
  private withholding = false;
  private timer: NodeJS.Timeout | undefined;
  private versionChecked = false;

  constructor(options: SystemdNotifierOptions = {}) {
    const env = options.env ?? process.env;
    this.socket = env.NOTIFY_SOCKET || undefined;
    this.path = env.PATH;
    this.enabled = this.socket !== undefined;
    this.command = options.command ?? 'systemd-notify';
    this.isHealthy = options.isHealthy ?? (() => true);
    this.logger = options.logger;
    this.watchdogIntervalMs = this.enabled ? watchdogInterval(env) : undefined;
  }

  /** READY=1 (with MAINPID, so systemd tracks this process), optionally a status; starts the automatic pings. */
  async ready(status?: string): Promise<boolean> {
    if (!this.enabled) return false;
    await this.checkVersion();
    const sent = this.send([`--pid=${process.pid}`, 'READY=1', ...statusLine(status)]);
    this.startPings();
    return sent;
  }

  /** Free-form status shown by `systemctl status` (one line; newlines become spaces). */
  status(text: string): Promise<boolean> {
    return this.send(statusLine(text));
  }

  /** One watchdog ping, regardless of `isHealthy()`. */
  watchdog(): Promise<boolean> {
    return this.send(['WATCHDOG=1']);
  }

  /** Asks systemd for more time in the current phase (start or stop), e.g. while TensorRT builds an engine. */
  extendTimeout(ms: number): Promise<boolean> {
    return this.send([`EXTEND_TIMEOUT_USEC=${Math.max(0, Math.round(ms * 1000))}`]);
  }

  /** STOPPING=1 (optionally a status); stops the automatic pings. */
  stopping(status?: string): Promise<boolean> {
    this.close();
    return this.send(['STOPPING=1', ...statusLine(status)]);
  }

  /** Stops the automatic pings without telling systemd anything. */
  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private startPings(): void {
    if (this.watchdogIntervalMs === undefined || this.timer) return;
    this.timer = setInterval(() => this.tick(), this.watchdogIntervalMs);
    this.timer.unref();
  }

  private tick(): void {
    let healthy: boolean;
    try {
      healthy = this.isHealthy();
    } catch {
      healthy = false;
    }
    if (!healthy) {
      if (!this.withholding) this.logger?.warn('watchdog pings withheld: the agent reports itself unhealthy');
      this.withholding = true;
      return;
    }
    if (this.withholding) this.logger?.warn('watchdog pings resumed');
    this.withholding = false;
    // Under heavy load a ping may still be waiting for systemd; do not pile more behind it.
    if (this.pingPending) return;
    this.pingPending = true;
    void this.watchdog().finally(() => {
      this.pingPending = false;
    });
  }

  private send(assignments: string[]): Promise<boolean> {
    if (!this.enabled || assignments.length === 0) return Promise.resolve(false);
    const result = this.queue.then(() => this.run(assignments));
    this.queue = result;
    return result;
  }

  private run(args: string[]): Promise<boolean> {
    return new Promise((done) => {
      // Only what the helper needs: no secrets from the agent's environment.
      const env = { NOTIFY_SOCKET: this.socket, ...(this.path ? { PATH: this.path } : {}) };
      const child = spawn(this.command, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
      const timer = setTimeout(() => child.kill('SIGKILL'), HELPER_TIMEOUT_MS);
      child.on('error', (e) => {
        clearTimeout(timer);
        this.logger?.warn({ err: e.message }, `systemd notification not sent: cannot run ${this.command}`);
        done(false);
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        if (code === 0) return done(true);
        const why = signal ? `killed (${signal}) after ${HELPER_TIMEOUT_MS} ms` : `exit code ${code}`;
        this.logger?.warn({ message: args.join(' '), stderr: stderr.trim() }, `systemd notification failed: ${this.command} ${why}`);
        done(false);
      });
    });
  }

  private async checkVersion(): Promise<void> {
    if (this.versionChecked) return;
    this.versionChecked = true;
    const version = await new Promise<number | undefined>((done) => {
      const child = spawn(this.command, ['--version'], { stdio: ['ignore', 'pipe', 'ignore'] });
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
      child.on('error', () => done(undefined));
      child.on('close', () => done(Number(/systemd (\d+)/.exec(out)?.[1]) || undefined));
    });
    if (version !== undefined && version < FIRST_VERSION_WITH_BARRIER) {
      this.logger?.warn(
        `${this.command} is from systemd ${version}, which does not wait for systemd to take a message: notifications ` +
          `may be dropped (READY=1 lost → start timeout). systemd ${FIRST_VERSION_WITH_BARRIER} or newer is needed.`,
      );
    }
  }
}

/** Half of WATCHDOG_USEC, when systemd set a watchdog for this very process (WATCHDOG_PID absent or ours). */
function watchdogInterval(env: NodeJS.ProcessEnv): number | undefined {
  const usec = Number(env.WATCHDOG_USEC);
  if (!Number.isInteger(usec) || usec <= 0) return undefined;
  if (env.WATCHDOG_PID && Number(env.WATCHDOG_PID) !== process.pid) return undefined;
  return Math.max(1, Math.floor(usec / 2000));
}

function statusLine(text: string | undefined): string[] {
  return text === undefined ? [] : [`STATUS=${text.replace(/[\r\n]+/g, ' ')}`];
}
