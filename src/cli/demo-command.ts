/**
 * `ast-agent demo`: the whole product on one machine with no hardware and no broker. A CC0 texture is cut
 * into parts (some with generated defects), a model is trained on good parts (first run only, cached),
 * and the parts go through a GStreamer file source into the agent, which publishes to an in-process MQTT
 * broker. Each part gets one console line; at the end a subscriber's count proves the MQTT path and the
 * verdicts are compared with the truth (the part file names say which parts are defective).
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import mqtt from 'mqtt';
import type { Logger } from 'pino';
import type { Agent } from '../agent/agent.js';
import { AgentConfigSchema } from '../config/agent-schema.js';
import { defaultBackboneCacheDir } from '../model/backbone/mobilenet-v2.js';
import { ensureDemoAssets } from './demo-assets.js';
import type { ResultSink } from '../publish/result-sink.js';
import { runAgent } from './run-command.js';

export interface DemoOptions {
  /** Frames per second fed by the file source. */
  fps: number;
  /** Loop over the parts until Ctrl-C instead of once. */
  loop: boolean;
  /** Port of the in-process broker (0: any free port). */
  mqttPort: number;
  httpPort: number;
}

async function freePortFor(port: number): Promise<number> {
  if (port !== 0) return port;
  const { createServer } = await import('node:net');
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

function waitForEnd(agent: Agent, expected: number, loop: boolean): Promise<void> {
  return new Promise((resolve) => {
    const timer = setInterval(() => {
      const h = agent.health();
      const ended = Object.values(h.streams as Record<string, string>).every((s) => s === 'ended');
      const t = agent.metrics.tally;
      if (!loop && ended && agent.loop.queued === 0 && t.pass + t.reject + t.error + t.dropped >= expected) {
        clearInterval(timer);
        resolve();
      }
    }, 100);
    process.once('SIGINT', () => {
      clearInterval(timer);
      resolve();
    });
  });
}

export async function demoCommand(version: string, logger: Logger, options: DemoOptions): Promise<void> {
  const assets = await ensureDemoAssets(version, logger);
  const stateDir = join(defaultBackboneCacheDir(), 'demo', 'state');
  await mkdir(stateDir, { recursive: true });
  const brokerPort = await freePortFor(options.mqttPort);
  const config = AgentConfigSchema.parse({
    station: 'demo-line',
    source: { kind: 'file', path: assets.parts, loop: options.loop, fps: options.fps },
    model: { bundle: assets.bundle },
    mqtt: { embeddedPort: brokerPort, topicPrefix: 'ast', metricsIntervalS: 0 },
    inspection: { deadlineMs: 5000, queueLength: 4 },
    http: { port: options.httpPort, host: '127.0.0.1' },
    stateDir,
    log: { level: 'error' },
  });

  const truth = new Map<string, boolean>();
  const verdicts = new Map<string, string>();
  const scoreboard: ResultSink = {
    name: 'demo-scoreboard',
    start: async () => {},
    stop: async () => {},
    publish: ({ record }) => {
      if (!record.partId) return;
      truth.set(record.partId, !record.partId.includes('-good'));
      verdicts.set(record.partId, record.verdict);
    },
  };
  logger.level = config.log.level;
  const agent = await runAgent(config, version, logger, { console: true, sinks: [scoreboard], deferSource: true });
  // An independent subscriber on the in-process broker: what SCADA would see.
  const received = { result: 0, reject: 0 };
  const subscriber = await mqtt.connectAsync(`mqtt://127.0.0.1:${brokerPort}`, { protocolVersion: 4 });
  subscriber.on('message', (topic) => {
    if (topic.endsWith('/result')) received.result++;
    else if (topic.endsWith('/reject')) received.reject++;
  });
  await subscriber.subscribeAsync(['ast/demo-line/result', 'ast/demo-line/reject'], { qos: 1 });

  const m = agent.loop.detector.bundle.manifest;
  console.log(`demo: model ${m.id} ${m.version} (${m.preset} preset, trained on good parts only) on ${agent.loop.detector.provider}`);
  console.log(`demo: ${assets.partCount} parts from ${assets.parts} through GStreamer at ${options.fps} fps`);
  console.log(`demo: results on mqtt://127.0.0.1:${brokerPort} topic ast/demo-line/result; health and metrics on http://127.0.0.1:${agent.httpPort}/healthz and /metrics`);
  agent.startSource();

  await waitForEnd(agent, assets.partCount, options.loop);
  await new Promise((r) => setTimeout(r, 300));
  let caught = 0, missed = 0, falseRejects = 0, good = 0, defective = 0;
  for (const [part, isDefect] of truth) {
    const rejected = verdicts.get(part) !== 'pass';
    if (isDefect) {
      defective++;
      if (rejected) caught++;
      else missed++;
    } else {
      good++;
      if (rejected) falseRejects++;
    }
  }
  const t = agent.metrics.tally;
  await agent.stop();
  await subscriber.endAsync();
  console.log(
    `demo: ${t.pass + t.reject + t.error} parts inspected (${t.pass} pass, ${t.reject} reject, ${t.error} error, ${t.dropped} dropped); ` +
      `defects caught ${caught}/${defective}, false rejects ${falseRejects}/${good}; ` +
      `an MQTT subscriber received ${received.result} results and ${received.reject} rejects`,
  );
}
