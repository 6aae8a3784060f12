/**
 * `ast-agent run --config FILE`: the daemon's entry. Validates the whole config before anything starts,
 * starts the agent, tells systemd when it inspects, pings the watchdog while healthy, and on SIGTERM or
 * SIGINT stops within a bound (parts in flight finished or failed safe) before exiting.
 */
import type { Logger } from 'pino';
import { Agent } from '../agent/agent.js';
import { SystemdNotifier } from '../agent/systemd-notify.js';
import type { AgentConfig } from '../config/agent-schema.js';
import { loadAgentConfig } from '../config/load-agent-config.js';
import { stationSinks } from '../agent/station-sinks.js';
import type { ResultSink } from '../publish/result-sink.js';

/** systemd's TimeoutStopSec in deploy/ast-edge.service is above this. */
export const SHUTDOWN_BOUND_MS = 8000;

export interface RunExtras {
  /** One line per part on stdout. */
  console?: boolean;
  /** More sinks (the demo's scoreboard). */
  sinks?: ResultSink[];
  deferSource?: boolean;
}

/** Starts the agent with the station's sinks. The caller owns `logger` (its level included). */
export async function runAgent(config: AgentConfig, version: string, logger: Logger, extra: RunExtras = {}): Promise<Agent> {
  return Agent.start(config, {
    version,
    logger,
    deferSource: extra.deferSource ?? false,
    sinks: async (ctx) => [...(await stationSinks(config, ctx, { version, logger, console: extra.console ?? false })), ...(extra.sinks ?? [])],
  });
}

export async function runCommand(configFile: string, version: string, logger: Logger): Promise<void> {
  const config = await loadAgentConfig(configFile);
  logger.level = config.log.level;
  let agent: Agent | null = null;
  // A wedged agent (detector run that never returns) stops pinging, so systemd restarts it.
  const notifier = new SystemdNotifier({ logger, isHealthy: () => agent !== null && agent.health().status !== 'down' });
  let exiting = false;
  const shutdown = (signal: string) => {
    if (exiting) return;
    exiting = true;
    logger.info({ signal }, 'stopping');
    // A stop that hangs (a wedged GPU driver) must not keep systemd waiting forever.
    setTimeout(() => {
      logger.error({ boundMs: SHUTDOWN_BOUND_MS }, 'shutdown bound exceeded; exiting');
      process.exit(1);
    }, SHUTDOWN_BOUND_MS + 1000).unref();
    void (async () => {
      // Not awaited: a slow notify helper must not eat into the parts' shutdown bound.
      void notifier.stopping('stopping: finishing parts in flight');
      await agent?.stop(SHUTDOWN_BOUND_MS);
      process.exit(0);
    })();
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  agent = await runAgent(config, version, logger);
  const m = agent.loop.detector.bundle.manifest;
  await notifier.ready(`inspecting: ${m.id} ${m.version} on ${agent.loop.detector.provider}`);
}
