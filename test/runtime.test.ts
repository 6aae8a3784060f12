import { Writable } from 'node:stream';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import * as ort from 'onnxruntime-node';
import { Graph } from '../src/onnx/graph.js';
import * as op from '../src/onnx/ops.js';
import { encodeModel } from '../src/onnx/serialize.js';
import { loadSession, RuntimeError } from '../src/runtime/session.js';

function tinyModel(): Uint8Array {
  const g = new Graph('tiny');
  g.output(op.relu(g, g.input('x', 'float32', [2])), 'y');
  return encodeModel(g);
}

function capture() {
  const lines: Record<string, any>[] = [];
  const stream = new Writable({
    write(chunk, _enc, done) {
      lines.push(JSON.parse(chunk.toString()));
      done();
    },
  });
  return { logger: pino({ level: 'info' }, stream), lines };
}

describe('execution-provider fallback', () => {
  // This machine has no GPU and onnxruntime-node's CUDA/TensorRT libraries are not installed (the npm
  // install skips their download), so TensorRT and CUDA genuinely fail to load here and CPU must run.
  it('falls back down the list to the CPU and says so in one line', async () => {
    const { logger, lines } = capture();
    const loaded = await loadSession(tinyModel(), { providers: [{ name: 'tensorrt', deviceId: 0, fp16: true, cachePath: '/tmp/trt' }, { name: 'cuda', deviceId: 0 }, { name: 'cpu', arena: true }] }, logger);
    expect(loaded.provider).toBe('cpu');
    expect(loaded.fallbacks.map((f) => f.provider)).toEqual(['tensorrt', 'cuda']);
    for (const f of loaded.fallbacks) expect(f.error.length).toBeGreaterThan(5);
    const info = lines.filter((l) => l.msg?.startsWith('inference runs on'));
    expect(info).toHaveLength(1);
    expect(info[0]!.msg).toMatch(/^inference runs on cpu \(tensorrt unavailable: .+; cuda unavailable: .+\)$/);
    expect(info[0]!.provider).toBe('cpu');
    const out = await loaded.session.run({ x: new ort.Tensor('float32', Float32Array.of(-1, 2), [2]) });
    expect(Array.from(out.y!.data as Float32Array)).toEqual([0, 2]);
    // The TensorRT engine options travel through the provider's environment variables.
    expect(process.env.ORT_TENSORRT_ENGINE_CACHE_ENABLE).toBe('1');
    expect(process.env.ORT_TENSORRT_CACHE_PATH).toBe('/tmp/trt');
    expect(process.env.ORT_TENSORRT_FP16_ENABLE).toBe('1');
    await loaded.session.release();
  });

  it('accepts provider names as plain strings', async () => {
    const loaded = await loadSession(tinyModel(), { providers: ['cuda', 'cpu'] as never });
    expect(loaded.provider).toBe('cpu');
    await loaded.session.release();
  });

  it('fails with every reason when no provider can load the model', async () => {
    const err = await loadSession(tinyModel(), { providers: [{ name: 'cuda', deviceId: 0 }] }).catch((e) => e);
    expect(err).toBeInstanceOf(RuntimeError);
    expect(err.message).toMatch(/^no execution provider could load the model: cuda: /);
    expect(err.attempts).toHaveLength(1);
  });

  it('names a model that is not ONNX', async () => {
    const err = await loadSession(new TextEncoder().encode('not a model'), {}).catch((e) => e);
    expect(err).toBeInstanceOf(RuntimeError);
    expect(err.message).toMatch(/cpu: /);
  });
});
