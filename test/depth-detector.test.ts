/** Depth and RGB-D bundles end to end: raw z maps → depth preparation → fused detector. */
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { describe, expect, it } from 'vitest';
import { readBundle } from '../src/bundle/bundle-store.js';
import { Detector } from '../src/runtime/detector.js';
import { depthInputsFor, type RawDepthFrame } from '../src/runtime/depth-inputs.js';
import { TINY, writeTinyBundle } from './helpers/tiny-bundle.js';

/** A tilted table at ~0.5 m with a box raised 2 cm on it; a few missing pixels. */
function scene(height: number, width: number, box: { top: number; left: number; size: number }): RawDepthFrame {
  const z = new Float32Array(height * width);
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) {
      const inBox = y >= box.top && y < box.top + box.size && x >= box.left && x < box.left + box.size;
      z[y * width + x] = 0.5 + 0.0002 * x + 0.0001 * y - (inBox ? 0.02 : 0);
    }
  z[5 * width + 7] = 0;
  z[20 * width + 30] = 0;
  return { z, height, width };
}

describe('depth-only detector', () => {
  it('scores raw depth frames; the map is zero off the part', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ast-depth-'));
    await writeTinyBundle(dir, 'depth', 'depth-test');
    const bundle = await readBundle(dir);
    expect(bundle.manifest.graphs.detector).toBe('detector.onnx');
    const d = await Detector.load(bundle, 'detector');
    const frames = [scene(64, 96, { top: 16, left: 24, size: 16 }), scene(64, 96, { top: 8, left: 56, size: 24 })];
    const inputs = depthInputsFor(bundle.manifest, frames);
    expect(inputs.depth.dims).toEqual([2, 1, TINY.h * 8, TINY.w * 8]);
    expect(inputs.mask.dims).toEqual([2, 1, TINY.h, TINY.w]);
    const r = await d.inspect(null, inputs);
    await d.release();
    expect(r.batch).toBe(2);
    let offPart = 0;
    let onPart = 0;
    for (let i = 0; i < r.map.length; i++) {
      if (inputs.mask.data[i] === 0) offPart = Math.max(offPart, Math.abs(r.map[i]!));
      else onPart = Math.max(onPart, r.map[i]!);
    }
    expect(offPart).toBe(0);
    expect(onPart).toBeGreaterThan(0);
    expect(r.scoreMax[0]).not.toBeCloseTo(r.scoreMax[1]!, 5);
  });

  it('an empty scene (no part in view) is refused with a clear reason', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ast-depth-'));
    const m = await writeTinyBundle(dir, 'depth', 'depth-empty');
    const flat = scene(64, 96, { top: 0, left: 0, size: 0 });
    expect(() => depthInputsFor(m, [flat])).toThrow(/foreground/);
    expect(() => depthInputsFor(m, [{ z: new Float32Array(64 * 96), height: 64, width: 96 }])).toThrow(/no valid \(positive, finite\) pixel/);
  });
});
