/**
 * The agent end to end with real parts: GStreamer sources (videotestsrc, multifilesrc over PNGs, 16-bit
 * depth PNGs), a real ONNX Runtime detector, the inspection loop, health and metrics over HTTP. Results
 * are collected by a sink in the test (the MQTT sink has its own tests).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../src/agent/agent.js';
import { AgentConfigSchema, type AgentConfig } from '../src/config/agent-schema.js';
import type { InspectionRecord } from '../src/config/result-schema.js';
import type { InspectionOutcome, ResultSink } from '../src/publish/result-sink.js';
import { agentConfig, silentLogger, tempDir, writeAgentBundle, writePartFolder, writeRgbdFrames } from './helpers/agent-bundle.js';
import { writeTinyBundle } from './helpers/tiny-bundle.js';
import { until } from './support/wait.js';

class CollectingSink implements ResultSink {
  readonly name = 'test';
  readonly outcomes: InspectionOutcome[] = [];
  async start(): Promise<void> {}
  publish(o: InspectionOutcome): void {
    this.outcomes.push(o);
  }
  async stop(): Promise<void> {}
  get records(): InspectionRecord[] {
    return this.outcomes.map((o) => o.record);
  }
}

async function startAgent(config: AgentConfig): Promise<{ agent: Agent; sink: CollectingSink }> {
  const sink = new CollectingSink();
  const agent = await Agent.start(config, { version: 'test', logger: silentLogger, processMetrics: false, sinks: () => [sink] });
  return { agent, sink };
}


let bundle: string;
let bundleB: string;

beforeAll(async () => {
  bundle = await writeAgentBundle(await tempDir('agent-bundle'), { id: 'model-a' });
  bundleB = await writeAgentBundle(await tempDir('agent-bundle'), { id: 'model-b', version: '2.0.0' });
});

describe('agent with a file source', () => {
  it('inspects every PNG of a folder once, in order, keyed by file name, with increasing seq', async () => {
    const parts = await tempDir('parts');
    const names = await writePartFolder(parts, 6);
    const config = agentConfig(bundle, await tempDir('state'), { source: { kind: 'file', path: parts, loop: false, fps: 15 } });
    const { agent, sink } = await startAgent(config);
    await until('6 results', () => sink.records.length >= 6, 20_000);
    await new Promise((r) => setTimeout(r, 200));
    const health = await (await fetch(`http://127.0.0.1:${agent.httpPort}/healthz`)).json() as { status: string; streams: Record<string, string> };
    const metrics = await (await fetch(`http://127.0.0.1:${agent.httpPort}/metrics`)).text();
    await agent.stop();

    expect(sink.records.map((r) => r.partId)).toEqual(names);
    const seqs = sink.records.map((r) => r.seq);
    expect(seqs.every((s, i) => i === 0 || s === seqs[i - 1]! + 1)).toBe(true);
    for (const { record, map, frame } of sink.outcomes) {
      expect(record.model).toEqual({ id: 'model-a', version: '1.0.0' });
      expect(record.score).toBeGreaterThan(0);
      expect(record.verdict).toBe(record.score! < 1 ? 'pass' : 'reject');
      expect(record.normalizedScore).toBeCloseTo(1 / (1 + Math.exp(-(record.score! - 1) / 0.25)), 6);
      expect(record.latencyMs).toBeGreaterThan(0);
      expect(Date.parse(record.capturedAt)).toBeGreaterThan(Date.now() - 60_000);
      expect(map!.width * map!.height).toBe(map!.data.length);
      expect(frame!.data.length).toBe(64 * 64 * 3);
    }
    // Different crops, different scores: the frames really are the files.
    expect(new Set(sink.records.map((r) => r.score!.toFixed(6))).size).toBe(6);
    expect(health.streams.colour).toBe('ended');
    expect(metrics).toMatch(/ast_inspections_total\{verdict="(pass|reject)",station="st1"\} \d/);
    expect(metrics).toMatch(/ast_model_info\{id="model-a",version="1.0.0",provider="cpu",station="st1"\} 1/);
    expect(metrics).toMatch(/ast_inspection_latency_seconds_count\{station="st1"\} 6/);
  });

  it('keeps sequence numbers increasing across a restart of the agent', async () => {
    const parts = await tempDir('parts');
    await writePartFolder(parts, 2);
    const state = await tempDir('state');
    const config = agentConfig(bundle, state, { source: { kind: 'file', path: parts, loop: false, fps: 20 } });
    const first = await startAgent(config);
    await until('2 results', () => first.sink.records.length >= 2, 20_000);
    await first.agent.stop();
    const second = await startAgent(config);
    await until('2 results', () => second.sink.records.length >= 2, 20_000);
    await second.agent.stop();
    expect(second.sink.records[0]!.seq).toBeGreaterThan(first.sink.records[1]!.seq);
  });
});

describe('overload and deadlines', () => {
  it('drops frames at the source when the detector falls behind, never queueing more than queueLength', async () => {
    const slow = await writeAgentBundle(await tempDir('agent-bundle'), { id: 'slow', size: 224 });
    const config = agentConfig(slow, await tempDir('state'), {
      source: { kind: 'test', pattern: 'snow', fps: 200 },
      inspection: { queueLength: 2, deadlineMs: 10_000 },
    });
    const { agent, sink } = await startAgent(config);
    let maxQueued = 0;
    const sampler = setInterval(() => (maxQueued = Math.max(maxQueued, agent.loop.queued)), 2);
    await until('8 results', () => sink.records.length >= 8, 20_000);
    clearInterval(sampler);
    // After stop the parts still queued have been scored (stop drains within its bound).
    await agent.stop();
    const t = { ...agent.metrics.tally };
    expect(maxQueued).toBeLessThanOrEqual(2);
    expect(t.dropped).toBeGreaterThan(0);
    expect(t.frames).toBeGreaterThan(t.pass + t.reject + t.error);
    // Every part that entered the queue got exactly one verdict (dropped frames are counted, not judged).
    expect(t.inspected).toBe(t.pass + t.reject + t.error + t.dropped);
    expect(sink.records.every((r) => r.verdict !== 'error')).toBe(true);
  });

  it('fails a part safe with verdict error when its deadline passes, and counts the late score', async () => {
    const config = agentConfig(bundle, await tempDir('state'), { source: { kind: 'test', fps: 5 }, inspection: { deadlineMs: 1 } });
    const { agent, sink } = await startAgent(config);
    await until('3 results', () => sink.records.length >= 3, 20_000);
    await until('a late score', () => agent.metrics.tally.error > 0 && sink.records.length >= 3, 20_000);
    await new Promise((r) => setTimeout(r, 300));
    const metrics = await (await fetch(`http://127.0.0.1:${agent.httpPort}/metrics`)).text();
    await agent.stop();
    for (const r of sink.records) {
      expect(r.verdict).toBe('error');
      expect(r.score).toBeNull();
      expect(r.reason).toMatch(/deadline of 1 ms missed/);
    }
    expect(Number(/ast_late_results_total\{station="st1"\} (\d+)/.exec(metrics)![1])).toBeGreaterThan(0);
  });
});

describe('external trigger', () => {
  it('inspects the first frame after each part-present message and fails a part that gets no frame', async () => {
    const config = agentConfig(bundle, await tempDir('state'), {
      source: { kind: 'test', fps: 20 },
      inspection: { trigger: { mode: 'external', maxWaitMs: 300 } },
    });
    const { agent, sink } = await startAgent(config);
    await until('frames', () => agent.metrics.tally.frames > 3, 20_000);
    expect(sink.records).toHaveLength(0);
    agent.loop.trigger('P-1');
    agent.loop.trigger('P-2');
    await until('2 results', () => sink.records.length >= 2, 20_000);
    // A part whose trigger comes while the camera is off gets an error verdict after maxWaitMs.
    const started = performance.now();
    await agent['source'].stop();
    agent.loop.trigger('P-3');
    await until('3 results', () => sink.records.length >= 3, 20_000);
    const waited = performance.now() - started;
    await agent.stop();
    expect(sink.records.map((r) => r.partId)).toEqual(['P-1', 'P-2', 'P-3']);
    expect(sink.records.slice(0, 2).every((r) => r.verdict !== 'error')).toBe(true);
    expect(sink.records[2]!.verdict).toBe('error');
    expect(sink.records[2]!.reason).toMatch(/no frame within 300 ms/);
    expect(waited).toBeGreaterThanOrEqual(290);
  });
});

describe('model swap', () => {
  it('swaps the model between two inspections: no part lost, none scored by a half-loaded model', async () => {
    const config = agentConfig(bundle, await tempDir('state'), { source: { kind: 'test', pattern: 'ball', fps: 30 }, inspection: { queueLength: 64 } });
    const { agent, sink } = await startAgent(config);
    await until('5 results', () => sink.records.length >= 5, 20_000);
    const { loadDetector } = await import('../src/agent/agent.js');
    await agent.swapDetector(await loadDetector(config, bundleB, silentLogger));
    const at = sink.records.length;
    await until('5 more results', () => sink.records.length >= at + 5, 20_000);
    await agent.stop();
    const t = { ...agent.metrics.tally };
    const models = sink.records.map((r) => r.model.id);
    const firstB = models.indexOf('model-b');
    expect(firstB).toBeGreaterThan(0);
    expect(models.slice(0, firstB).every((m) => m === 'model-a')).toBe(true);
    expect(models.slice(firstB).every((m) => m === 'model-b')).toBe(true);
    expect(sink.records.every((r) => r.verdict !== 'error')).toBe(true);
    expect(t.inspected).toBe(t.pass + t.reject + t.error + t.dropped);
    expect(t.dropped).toBe(0);
  });
});

describe('camera failures', () => {
  it('restarts a camera that stops, reports it, and keeps inspecting', async () => {
    const config = agentConfig(bundle, await tempDir('state'), {
      source: { kind: 'test', fps: 20, numBuffers: 4, reconnect: { initialMs: 50, maxMs: 200 } },
    });
    const { agent, sink } = await startAgent(config);
    await until('10 results over several camera restarts', () => sink.records.length >= 10, 20_000);
    const metrics = await (await fetch(`http://127.0.0.1:${agent.httpPort}/metrics`)).text();
    await agent.stop();
    expect(Number(/ast_source_restarts_total\{stream="colour",station="st1"\} (\d+)/.exec(metrics)![1])).toBeGreaterThanOrEqual(2);
    expect(sink.records.every((r) => r.verdict !== 'error')).toBe(true);
  });
});

describe('RGB-D', () => {
  it('pairs colour PNGs with 16-bit depth PNGs by order and scores a depth model', async () => {
    const dir = await tempDir('rgbd');
    const depthBundle = join(dir, 'bundle');
    await writeTinyBundle(depthBundle, 'depth', 'depth-model');
    const { readBundle } = await import('../src/bundle/bundle-store.js');
    const m = (await readBundle(depthBundle)).manifest;
    expect(m.calibration).not.toBeNull();
    const { width, height } = m.input;
    await writeRgbdFrames(dir, 4, width, height);
    const config = AgentConfigSchema.parse({
      station: 'st1',
      source: {
        kind: 'file', path: join(dir, 'rgb'), loop: false, fps: 10,
        depth: { kind: 'file', path: join(dir, 'depth'), loop: false, fps: 10, pairBy: 'order', metresPerUnit: 0.001 },
      },
      model: { bundle: depthBundle, intraOpThreads: 1 },
      http: { port: 0, host: '127.0.0.1' },
      stateDir: join(dir, 'state'),
    });
    const { agent, sink } = await startAgent(config);
    await until('4 results', () => sink.records.length >= 4, 20_000);
    await agent.stop();
    expect(sink.records.map((r) => r.partId)).toEqual(['0.png', '1.png', '2.png', '3.png']);
    expect(sink.records.every((r) => r.verdict !== 'error')).toBe(true);
    // Different boxes, different scores: the depth frames reached the model paired with their colour frame.
    expect(new Set(sink.records.map((r) => r.score!.toFixed(6))).size).toBe(4);
  });

  it('refuses to start a depth model without a depth stream, naming the field', async () => {
    const dir = await tempDir('rgbd');
    await writeTinyBundle(join(dir, 'bundle'), 'depth', 'depth-model');
    const config = agentConfig(join(dir, 'bundle'), join(dir, 'state'));
    await expect(Agent.start(config, { version: 'test', logger: silentLogger, processMetrics: false })).rejects.toThrow(
      'source.depth: model depth-model runs in depth mode and needs a depth stream, which this station does not have',
    );
  });
});

describe('start-up refusals', () => {
  it('refuses an uncalibrated bundle and a missing one with the field named', async () => {
    const raw = await writeAgentBundle(await tempDir('agent-bundle'), { id: 'raw', calibration: null });
    await expect(Agent.start(agentConfig(raw, await tempDir('state')), { version: 't', logger: silentLogger, processMetrics: false })).rejects.toThrow(
      /model\.bundle: bundle raw has no calibration/,
    );
    await expect(
      Agent.start(agentConfig('/nonexistent/bundle', await tempDir('state')), { version: 't', logger: silentLogger, processMetrics: false }),
    ).rejects.toThrow(/^model\.bundle: .*\/nonexistent\/bundle/);
  });

  it('refuses a state folder it cannot write', async () => {
    const file = join(await tempDir('state'), 'a-file');
    await writeFile(file, 'x');
    await expect(Agent.start(agentConfig(bundle, join(file, 'sub')), { version: 't', logger: silentLogger, processMetrics: false })).rejects.toThrow(
      /^stateDir: .*a-file\/sub is not usable/,
    );
  });
});
