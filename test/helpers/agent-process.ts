/**
 * The agent as the real daemon: `node bin/ast-agent.js run --config <yaml>` in a child process with its own
 * environment. Its stderr (pino JSON, one object per line) is parsed and kept, so tests wait for log
 * messages, read the results it logged, and send it signals (SIGTERM for a clean stop, SIGKILL for a crash).
 *
 * Every process started here is tracked, and `killAgentProcesses()` (for afterEach) SIGKILLs those still
 * running — by their own pid, nothing else.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import type { InspectionRecord } from '../../src/config/result-schema.js';
import { untilNotified } from '../support/wait.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const BIN = fileURLToPath(new URL('../../bin/ast-agent.js', import.meta.url));

/** One pino log line; `raw` keeps the line as written. */
export interface LogLine {
  level: number;
  time: number;
  msg: string;
  raw: string;
  [key: string]: unknown;
}

export interface AgentExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** performance.now() when the process exited ('exit', not the later 'close'). */
  at: number;
}

export interface AgentProcessOptions {
  /** Added to (and overriding) the environment; `undefined` removes a variable. */
  env?: Record<string, string | undefined>;
  /** Echo the child's stderr to this process's stderr (debugging a test). */
  echo?: boolean;
}

const live = new Set<AgentProcess>();

/** Writes an agent configuration (a plain object) as YAML. */
export async function writeAgentYaml(file: string, config: Record<string, unknown>): Promise<string> {
  await writeFile(file, stringify(config));
  return file;
}

/** SIGKILLs every agent process started by this helper that is still running (afterEach). */
export async function killAgentProcesses(): Promise<void> {
  await Promise.all([...live].map((p) => p.kill()));
}

export class AgentProcess {
  readonly logs: LogLine[] = [];
  /** stderr lines that are not JSON (a crash trace, a config refusal). */
  readonly otherStderr: string[] = [];
  stdout = '';
  /** Set once the process has exited. */
  exit: AgentExit | null = null;
  readonly exited: Promise<AgentExit>;
  private partial = '';
  private readonly waiters = new Set<() => void>();

  private constructor(
    readonly child: ChildProcess,
    readonly configFile: string,
    private readonly echo: boolean,
  ) {
    live.add(this);
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      this.stdout += d;
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => this.onStderr(d));
    this.exited = new Promise((resolve) => {
      let exitAt = 0;
      child.once('exit', () => {
        exitAt = performance.now();
      });
      // 'close' comes after 'exit' once stderr is drained: every log line is in by then.
      child.once('close', (code, signal) => {
        if (this.partial !== '') this.parseLines([this.partial]);
        this.partial = '';
        this.exit = { code, signal, at: exitAt || performance.now() };
        live.delete(this);
        resolve(this.exit);
        this.notify();
      });
    });
    // A spawn failure (node missing) shows as an exit.
    child.once('error', (e) => {
      this.otherStderr.push(`spawn error: ${e.message}`);
      this.notify();
    });
  }

  /** Starts `node bin/ast-agent.js run --config <configFile>`. */
  static start(configFile: string, options: AgentProcessOptions = {}): AgentProcess {
    const env: Record<string, string | undefined> = { ...process.env };
    // Nothing from the test runner's environment may override the config file or talk to systemd.
    for (const k of Object.keys(env)) if (k.startsWith('AST_EDGE_') || k === 'NOTIFY_SOCKET' || k.startsWith('WATCHDOG_') || k === 'LOG_LEVEL') delete env[k];
    for (const [k, v] of Object.entries(options.env ?? {})) {
      if (v === undefined) delete env[k];
      else env[k] = v;
    }
    const child = spawn(process.execPath, [BIN, 'run', '--config', configFile], { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
    return new AgentProcess(child, configFile, options.echo ?? process.env.AGENT_PROCESS_ECHO === '1');
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.exit === null;
  }

  /** Results the agent logged (LogResultSink: pass at debug, reject/error at info), in log order. */
  results(): InspectionRecord[] {
    return this.logs.filter((l) => l.result && /^part \d+ /.test(l.msg)).map((l) => l.result as InspectionRecord);
  }

  /** Log lines whose message matches. */
  messages(msg: string | RegExp): LogLine[] {
    return this.logs.filter((l) => (typeof msg === 'string' ? l.msg === msg : msg.test(l.msg)));
  }

  /**
   * Resolves with the first log line (from `from` on) that matches; rejects after `timeoutMs` or when the
   * process exits first, with the end of its stderr in the message.
   */
  waitForLog(match: (l: LogLine) => boolean, what: string, timeoutMs = 30_000, from = 0): Promise<LogLine> {
    return this.waitFor(() => this.logs.slice(from).find(match), what, timeoutMs);
  }

  /** Waits until `probe` returns something truthy (checked on every log line and on exit). */
  waitFor<T>(probe: () => T | undefined | null | false, what: string, timeoutMs = 30_000): Promise<T> {
    return untilNotified(this.waiters, probe, {
      what,
      timeoutMs,
      context: () => `\n${this.tail()}`,
      gaveUp: () => (this.exit ? `agent exited (code ${this.exit.code}, signal ${this.exit.signal}) before ${what}\n${this.tail()}` : null),
    });
  }

  /** Waits for "agent inspecting" (model loaded, sinks started, camera on). */
  ready(timeoutMs = 40_000): Promise<LogLine> {
    return this.waitForLog((l) => l.msg === 'agent inspecting', 'the agent to start inspecting', timeoutMs);
  }

  /** Waits until the agent has logged at least `count` results (in total). */
  waitForResults(count: number, timeoutMs = 30_000): Promise<InspectionRecord[]> {
    return this.waitFor(() => {
      const r = this.results();
      return r.length >= count ? r : null;
    }, `${count} results logged`, timeoutMs);
  }

  signal(signal: NodeJS.Signals): void {
    if (this.running) this.child.kill(signal);
  }

  /** SIGTERM and wait for the exit; SIGKILL after `timeoutMs`. */
  async stop(timeoutMs = 15_000): Promise<AgentExit> {
    if (this.exit) return this.exit;
    this.signal('SIGTERM');
    const timer = setTimeout(() => this.signal('SIGKILL'), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGKILL (a crash: no shutdown code runs) and wait for the exit. */
  async kill(): Promise<AgentExit> {
    if (this.exit) return this.exit;
    this.signal('SIGKILL');
    return this.exited;
  }

  /** The last lines of stderr, for error messages. */
  tail(lines = 30): string {
    const all = [...this.logs.map((l) => l.raw), ...this.otherStderr];
    return all.slice(-lines).join('\n');
  }

  private onStderr(chunk: string): void {
    if (this.echo) process.stderr.write(chunk);
    const text = this.partial + chunk;
    const lines = text.split('\n');
    this.partial = lines.pop()!;
    this.parseLines(lines);
    this.notify();
  }

  private parseLines(lines: string[]): void {
    for (const line of lines) {
      if (line.trim() === '') continue;
      let parsed: unknown;
      try {
        parsed = JSON.parse(line);
      } catch {
        parsed = null;
      }
      if (parsed && typeof parsed === 'object' && typeof (parsed as LogLine).msg === 'string') this.logs.push({ ...(parsed as LogLine), raw: line });
      else this.otherStderr.push(line);
    }
  }

  private notify(): void {
    for (const w of [...this.waiters]) w();
  }
}
