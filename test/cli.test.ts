/** The CLI as a user runs it: a real process, real files. */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { decodeNpy, encodeNpy } from '../src/formats/npy.js';
import { f32 } from '../src/onnx/tensor.js';
import { maxRelativeError } from './helpers/run-graph.js';

const run = promisify(execFile);
const FIX = 'test/fixtures/reference';

async function agent(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run('node', ['bin/ast-agent.js', ...args], { env: { ...process.env, LOG_LEVEL: 'warn' } });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

let dir: string;
let bundle: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ast-cli-'));
  bundle = join(dir, 'bundle');
  const r = await agent('import-reference', '--teacher', `${FIX}/teacher.safetensors`, '--student', `${FIX}/student.safetensors`, '--preset', 'paper', '--mode', 'rgb', '--feature-size', '8x12', '--out', bundle);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
});

describe('ast-agent CLI', () => {
  it('score writes the reference image scores and maps', async () => {
    const out = join(dir, 'r.json');
    const maps = join(dir, 'm.npy');
    const r = await agent('score', '--bundle', bundle, '--features', `${FIX}/features.npy`, '--out', out, '--maps', maps);
    expect(r.code).toBe(0);
    const ours = JSON.parse(await readFile(out, 'utf8'));
    const ref = JSON.parse(await readFile(`${FIX}/scores.json`, 'utf8'));
    expect(ours.samples).toHaveLength(2);
    ours.samples.forEach((s: { max: number; mean: number }, i: number) => {
      expect(Math.abs(s.max - ref.samples[i].max) / ref.samples[i].max).toBeLessThan(1e-4);
      expect(Math.abs(s.mean - ref.samples[i].mean) / ref.samples[i].mean).toBeLessThan(1e-4);
    });
    const m = decodeNpy(await readFile(maps));
    expect(m.dims).toEqual([2, 8, 12]);
    expect(maxRelativeError(m.data as Float32Array, decodeNpy(await readFile(`${FIX}/map.npy`)).data as Float32Array)).toBeLessThan(1e-4);
  });

  it('bundle inspect describes the model in words', async () => {
    const r = await agent('bundle', 'inspect', bundle);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Teacher: normalizing flow of 4 coupling blocks, subnets with 16 hidden channels, kernels 3, 3, 3, 5/);
    expect(r.stdout).toMatch(/Student: conv net of width 24 with 4 residual blocks/);
    expect(r.stdout).toMatch(/Backbone: none — a feature-level bundle/);
    expect(r.stdout).toMatch(/Golden samples: none — as an update, an RGB model is refused/);
    expect(r.stdout).toMatch(/weights\.safetensors .* sha256 [0-9a-f]{64}/);
  });

  it('bundle pack and check work on the archive', async () => {
    const tar = join(dir, 'b.tar');
    expect((await agent('bundle', 'pack', bundle, '--out', tar)).code).toBe(0);
    const r = await agent('bundle', 'check', tar);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^ok: reference-rgb 1\.0\.0, 2 files verified/);
  });

  it('says which input is wrong: missing file, wrong shape, wrong dtype, bad flag', async () => {
    const out = join(dir, 'x.json');
    let r = await agent('score', '--bundle', bundle, '--features', join(dir, 'nope.npy'), '--out', out);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/cannot read features .*nope\.npy: ENOENT/);

    const wrong = join(dir, 'wrong.npy');
    await writeFile(wrong, encodeNpy(f32([1, 24, 8, 8], new Float32Array(24 * 64))));
    r = await agent('score', '--bundle', bundle, '--features', wrong, '--out', out);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/features have shape \[1, 24, 8, 8\] but bundle reference-rgb expects \[N, 24, 8, 12\]/);

    const garbage = join(dir, 'garbage.npy');
    await writeFile(garbage, 'hello');
    r = await agent('score', '--bundle', bundle, '--features', garbage, '--out', out);
    expect(r.stderr).toMatch(/garbage\.npy: not a NumPy \.npy file/);

    r = await agent('score', '--bundle', bundle, '--features', `${FIX}/features.npy`, '--out', out, '--providers', 'tpu');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/unknown execution provider "tpu"/);
  });

  it('import-reference names a missing tensor', async () => {
    const r = await agent('import-reference', '--teacher', `${FIX}/student.safetensors`, '--student', `${FIX}/student.safetensors`, '--out', join(dir, 'bad'));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/no coupling blocks found \(expected keys module_list\.<n>\.s1\.gamma\)/);
  });
});
