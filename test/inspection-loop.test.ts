/**
 * The inspection loop on its own, fed hand-made frames and a real detector: the fail-safe edges that are
 * hard to reach through a camera — a state folder that stops accepting writes, a second model swap while
 * one is pending, a part announced while the agent stops.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentMetrics } from '../src/agent/agent-metrics.js';
import { InspectionLoop } from '../src/agent/inspection-loop.js';
import { SequenceStore } from '../src/agent/sequence-store.js';
import { readBundle } from '../src/bundle/bundle-store.js';
import type { Frame } from '../src/camera/frame.js';
import { AgentConfigSchema } from '../src/config/agent-schema.js';
import type { InspectionRecord } from '../src/config/result-schema.js';
import type { ResultSink } from '../src/publish/result-sink.js';
import { Detector } from '../src/runtime/detector.js';
import { silentLogger, tempDir, writeAgentBundle } from './helpers/agent-bundle.js';
import { until } from './support/wait.js';

let detector: Detector;
let other: Detector;

beforeAll(async () => {
  detector = await Detector.load(await readBundle(await writeAgentBundle(await tempDir('loop-bundle'), { id: 'loop-a' })), 'detector');
  other = await Detector.load(await readBundle(await writeAgentBundle(await tempDir('loop-bundle'), { id: 'loop-b' })), 'detector');
});
afterAll(async () => {
  await detector?.release();
  await other?.release();
});

function frame(index: number): { colour: Frame } {
  const now = performance.now();
  return { colour: { format: 'RGB', width: 64, height: 64, data: new Uint8Array(64 * 64 * 3).fill(index * 7), capturedAt: now, capturedAtWall: Date.now(), index } };
}

async function loopWith(stateDir: string, inspection: Record<string, unknown> = {}, block = 1000, extraSinks: ResultSink[] = []) {
  const records: InspectionRecord[] = [];
  const config = AgentConfigSchema.parse({ station: 's', source: { kind: 'test' }, model: { bundle: 'x' }, inspection });
  const loop = new InspectionLoop(
    detector,
    [{ name: 't', start: async () => {}, stop: async () => {}, publish: (o) => void records.push(o.record) }, ...extraSinks],
    await SequenceStore.open(stateDir, block),
    new AgentMetrics('s', false),
    { station: 's', inspection: config.inspection },
    silentLogger,
  );
  return { loop, records };
}

describe('inspection loop fail-safe edges', () => {
  it('hands each result to the sink carrying rejects first, then to the others in their order; a throwing sink stops none', async () => {
    const order: string[] = [];
    const sink = (name: string, carriesRejects = false, throws = false): ResultSink => ({
      name,
      carriesRejects,
      start: async () => {},
      stop: async () => {},
      publish: (o) => {
        order.push(`${name}:${o.record.seq}`);
        if (throws) throw new Error(`${name} broke`);
      },
    });
    const { loop, records } = await loopWith(await tempDir('loop-state'), {}, 1000, [sink('log', false, true), sink('mqtt', true), sink('capture')]);
    loop.offerFrame(frame(1));
    await until('verdict', () => records.length === 1, 10_000);
    await until('all sinks', () => order.length === 3, 10_000);
    const seq = records[0]!.seq;
    expect(order).toEqual([`mqtt:${seq}`, `log:${seq}`, `capture:${seq}`]);
    await loop.stop(1000);
  });

  it('still gives every part its verdict when sequence numbers can no longer be reserved on disk', async () => {
    const state = await tempDir('loop-state');
    const { loop, records } = await loopWith(state, { queueLength: 64 }, 2);
    // The next reservation's rename lands on a folder: the write fails, as on a broken disk.
    await rm(join(state, 'sequence.json'));
    await mkdir(join(state, 'sequence.json'));
    for (let i = 0; i < 6; i++) {
      loop.offerFrame(frame(i));
      await until(`verdict ${i}`, () => records.length > i, 10_000);
    }
    await loop.stop(1000);
    expect(records.map((r) => r.verdict).every((v) => v !== 'error')).toBe(true);
    expect(new Set(records.map((r) => r.seq)).size).toBe(6);
    expect(loop.sequenceFault).not.toBeNull();
  });

  it('refuses a second model swap while one is pending; the first one completes', async () => {
    const { loop, records } = await loopWith(await tempDir('loop-state'), { queueLength: 8 });
    for (let i = 0; i < 4; i++) loop.offerFrame(frame(i));
    const first = loop.swapModel(other);
    await expect(loop.swapModel(detector)).rejects.toThrow('another model swap is pending');
    expect(await first).toBe(detector);
    await until('4 verdicts', () => records.length >= 4, 10_000);
    expect(records.slice(-1)[0]!.model.id).toBe('loop-b');
    // Idle loop: a swap applies at once, and stop has no pending model to hand back.
    expect(await loop.swapModel(detector)).toBe(other);
    expect(await loop.stop(1000)).toBeNull();
  });

  it('fails safe a part announced while the loop is stopping', async () => {
    const { loop, records } = await loopWith(await tempDir('loop-state'), { trigger: { mode: 'external', maxWaitMs: 5000 } });
    await loop.stop(100);
    loop.trigger('late-part');
    await until('a verdict for the late part', () => records.length === 1, 5000);
    expect(records[0]).toMatchObject({ partId: 'late-part', verdict: 'error', reason: 'agent shutting down before a frame was captured' });
  });
});
