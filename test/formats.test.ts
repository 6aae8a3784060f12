import { describe, expect, it } from 'vitest';
import { decodeNpy, encodeNpy } from '../src/formats/npy.js';
import { decodeSafetensors, encodeSafetensors } from '../src/formats/safetensors.js';
import { Graph } from '../src/onnx/graph.js';
import * as op from '../src/onnx/ops.js';
import { decodeModel, embedModel, encodeModel, modelSignature } from '../src/onnx/serialize.js';
import { f32, i64, type HostTensor } from '../src/onnx/tensor.js';
import { runGraph } from './helpers/run-graph.js';

describe('.npy', () => {
  it('round-trips float32 and reads the header NumPy writes', () => {
    const t = f32([2, 3, 1], [1, 2, 3, 4, 5, 6.5]);
    const back = decodeNpy(encodeNpy(t));
    expect(back.dims).toEqual([2, 3, 1]);
    expect(Array.from(back.data as Float32Array)).toEqual([1, 2, 3, 4, 5, 6.5]);
    // 64-byte aligned header, as numpy.save writes it
    const bytes = encodeNpy(t);
    expect((10 + new DataView(bytes.buffer).getUint16(8, true)) % 64).toBe(0);
  });
  it('refuses Fortran order and unknown dtypes by name', () => {
    const header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }";
    const bytes = new Uint8Array([0x93, ...new TextEncoder().encode('NUMPY'), 1, 0, header.length, 0, ...new TextEncoder().encode(header), 0, 0, 0, 0, 0, 0, 0, 0]);
    expect(() => decodeNpy(bytes, 'x.npy')).toThrow(/x\.npy: dtype <f8 is not supported/);
  });
});

describe('safetensors', () => {
  it('round-trips float32 and int64 tensors with metadata', () => {
    const m = new Map<string, HostTensor>([
      ['a.weight', f32([2, 2], [1, 2, 3, 4])],
      ['perm.0', i64([3], [2, 0, 1])],
    ]);
    const back = decodeSafetensors(encodeSafetensors(m, { note: 'x' }));
    expect(Array.from(back.get('a.weight')!.data as Float32Array)).toEqual([1, 2, 3, 4]);
    expect(Array.from(back.get('perm.0')!.data as BigInt64Array, Number)).toEqual([2, 0, 1]);
  });
  it('refuses inconsistent offsets and says which tensor', () => {
    const bytes = encodeSafetensors(new Map([['w', f32([4], [1, 2, 3, 4])]]));
    const cut = bytes.subarray(0, bytes.length - 4);
    expect(() => decodeSafetensors(cut, 'ckpt.safetensors')).toThrow(/ckpt\.safetensors: tensor "w" has data offsets/);
  });
});

describe('ONNX serialization and embedding', () => {
  it('a decoded model embeds into another graph under a prefix and computes the same', async () => {
    const inner = new Graph('inner');
    const x = inner.input('x', 'float32', ['N', 3]);
    inner.output(op.mul(inner, op.relu(inner, x), inner.initializer('w', f32([3], [1, 2, 3]))), 'y');
    const decoded = decodeModel(encodeModel(inner));
    expect(modelSignature(decoded)).toEqual({
      inputs: [{ name: 'x', dtype: 'float32', shape: ['N', 3] }],
      outputs: [{ name: 'y', dtype: 'float32', shape: ['N', 3] }],
    });
    const outer = new Graph('outer');
    const a = outer.input('a', 'float32', [1, 3]);
    const emb = embedModel(outer, decoded, { x: op.add(outer, a, a) }, 'inner/');
    outer.output(emb.outputs.get('y')!, 'out');
    const out = await runGraph(outer, { a: f32([1, 3], [-1, 1, 2]) });
    expect(Array.from(out.out!.data)).toEqual([0, 4, 12]);
  });
  it('refuses to embed a model with an unconnected input', () => {
    const inner = new Graph('inner');
    inner.output(op.relu(inner, inner.input('x', 'float32', [1])), 'y');
    expect(() => embedModel(new Graph('o'), decodeModel(encodeModel(inner)), {}, 'p/')).toThrow(/embedded model input "x" was not connected/);
  });
});
