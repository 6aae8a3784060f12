import { cp, mkdtemp, readFile, rm, truncate, writeFile, appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { beforeAll, describe, expect, it } from 'vitest';
import { BundleError, packBundle, readBundle } from '../src/bundle/bundle-store.js';
import { loadBundleWeights } from '../src/bundle/assemble.js';
import { Detector } from '../src/runtime/detector.js';
import { f32 } from '../src/onnx/tensor.js';
import { TINY, tinyModel, writeTinyBundle } from './helpers/tiny-bundle.js';

let root: string;
let good: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ast-bundle-test-'));
  good = join(root, 'good');
  await writeTinyBundle(good);
});

async function copyOfGood(name: string): Promise<string> {
  const dir = join(root, name);
  await rm(dir, { recursive: true, force: true });
  await cp(good, dir, { recursive: true });
  return dir;
}

async function editManifest(dir: string, edit: (m: Record<string, any>) => void) {
  const path = join(dir, 'manifest.json');
  const m = JSON.parse(await readFile(path, 'utf8'));
  edit(m);
  await writeFile(path, JSON.stringify(m));
}

describe('bundle round trip', () => {
  it('reads back what it wrote: manifest, weights and graphs that score', async () => {
    const b = await readBundle(good);
    expect(b.manifest.id).toBe('tiny');
    expect(Object.keys(b.manifest.files).sort()).toEqual(['head.onnx', 'weights.safetensors']);
    const { teacher, student } = await loadBundleWeights(b);
    const original = tinyModel();
    expect(teacher.blocks.map((x) => x.permutation)).toEqual(original.teacher.blocks.map((x) => x.permutation));
    expect(teacher.blocks[2]!.s1.gamma).toBeCloseTo(0.5, 7);
    expect(Array.from(student.conv2.weight.data)).toEqual(Array.from(original.student.conv2.weight.data));
    const d = await Detector.load(b, 'head');
    const features = f32([3, TINY.channels, TINY.h, TINY.w], Array.from({ length: 3 * TINY.channels * TINY.h * TINY.w }, (_, i) => Math.sin(i)));
    const r = await d.scoreFeatures(features);
    await d.release();
    expect(r.batch).toBe(3);
    expect(r.map.length).toBe(3 * TINY.h * TINY.w);
    for (let i = 0; i < 3; i++) {
      const map = r.map.subarray(i * TINY.h * TINY.w, (i + 1) * TINY.h * TINY.w);
      expect(r.scoreMax[i]).toBeCloseTo(Math.max(...map), 6);
      expect(r.scoreMean[i]).toBeCloseTo(map.reduce((a, v) => a + v, 0) / map.length, 5);
      expect(r.scoreMax[i]).toBeGreaterThan(0);
    }
  });

  it('packs into one .tar and reads it back identically', async () => {
    const tar = join(root, 'tiny.tar');
    await packBundle(good, tar);
    const fromTar = await readBundle(tar);
    const fromDir = await readBundle(good);
    expect(fromTar.manifest).toEqual(fromDir.manifest);
  });
});

describe('refusal of corrupt bundles', () => {
  it('a tampered file: names the file and says the hash differs', async () => {
    const dir = await copyOfGood('tampered');
    const bytes = await readFile(join(dir, 'head.onnx'));
    bytes[bytes.length - 10] ^= 0xff;
    await writeFile(join(dir, 'head.onnx'), bytes);
    await expect(readBundle(dir)).rejects.toThrow(/file "head\.onnx" has sha256 [0-9a-f]{64}, the manifest says [0-9a-f]{64} \(corrupt or tampered\)/);
  });

  it('a truncated file', async () => {
    const dir = await copyOfGood('truncated');
    await truncate(join(dir, 'weights.safetensors'), 100);
    await expect(readBundle(dir)).rejects.toThrow(/"weights\.safetensors" has 100 bytes, the manifest says \d+ bytes \(truncated\?\)/);
  });

  it('a missing file', async () => {
    const dir = await copyOfGood('missing');
    await rm(join(dir, 'head.onnx'));
    await expect(readBundle(dir)).rejects.toThrow(/file "head\.onnx" listed in the manifest is missing/);
  });

  it('a manifest that is not JSON', async () => {
    const dir = await copyOfGood('notjson');
    await appendFile(join(dir, 'manifest.json'), '}{');
    await expect(readBundle(dir)).rejects.toThrow(/manifest\.json is not valid JSON/);
  });

  it.each([
    ['version', (m: any) => (m.version = '1.0'), /version: must be a semantic version/],
    ['model.mode', (m: any) => (m.model.mode = 'thermal'), /model\.mode: /],
    ['model.teacher.kernelSizes', (m: any) => m.model.teacher.kernelSizes.pop(), /model\.teacher\.kernelSizes: teacher\.kernelSizes needs one entry per block/],
    ['input.std', (m: any) => (m.input.std = [1, 0, 1]), /input\.std\.1: /],
    ['calibration.goodStd', (m: any) => (m.calibration.goodStd = -1), /calibration\.goodStd: /],
    ['files', (m: any) => delete m.files['head.onnx'], /files\.head\.onnx: "head\.onnx" is used by the manifest but has no sha256 entry/],
    ['files (path escape)', (m: any) => (m.files['../etc/passwd'] = m.files['head.onnx']), /files\.\.\.\/etc\/passwd: file names must be relative paths/],
    ['format', (m: any) => (m.format = 'something-else'), /format: /],
  ])('an invalid field is named: %s', async (name, edit, message) => {
    const dir = await copyOfGood(`bad-${name.replace(/\W/g, '_')}`);
    await editManifest(dir, edit);
    const err = await readBundle(dir).catch((e) => e);
    expect(err).toBeInstanceOf(BundleError);
    expect(err.message).toMatch(/manifest\.json is invalid/);
    expect(err.message).toMatch(message);
  });

  it('a path that is not a bundle', async () => {
    await expect(readBundle(join(root, 'nope'))).rejects.toThrow(/does not exist/);
    await expect(readBundle(root)).rejects.toThrow(/no manifest\.json/);
  });

  it('an archive that is not a tar', async () => {
    const f = join(root, 'garbage.tar');
    await writeFile(f, 'this is not a tar archive at all'.repeat(40));
    await expect(readBundle(f)).rejects.toThrow(BundleError);
  });
});
