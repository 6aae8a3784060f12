import { describe, expect, it } from 'vitest';
import { Graph } from '../src/onnx/graph.js';
import { f32 } from '../src/onnx/tensor.js';
import { buildAnomalyMap, buildImageScores, buildUpsampledMap, gaussianKernel } from '../src/model/anomaly-map.js';
import { judge, normalizeScore, rawThresholdFromNormalized, verdictFor } from '../src/model/verdict.js';
import { positionalEncoding } from '../src/model/positional-encoding.js';
import { runGraph } from './helpers/run-graph.js';

describe('anomaly map and image scores', () => {
  // Two channels, 1×3 pixels. Differences per pixel: (1, 1), (0, 2), (3, 0) → mean of squares 1, 2, 4.5.
  const zt = f32([1, 2, 1, 3], [1, 0, 3, 1, 2, 0]);
  const zs = f32([1, 2, 1, 3], [0, 0, 0, 0, 0, 0]);

  it('is the per-pixel mean over channels of the squared distance; max and mean scores', async () => {
    const g = new Graph('map');
    const a = g.input('zt', 'float32', [1, 2, 1, 3]);
    const b = g.input('zs', 'float32', [1, 2, 1, 3]);
    const m = buildAnomalyMap(g, a, b);
    const s = buildImageScores(g, m);
    g.output(m.map, 'map');
    g.output(s.max, 'max');
    g.output(s.mean, 'mean');
    const out = await runGraph(g, { zt, zs });
    expect(Array.from(out.map!.data)).toEqual([1, 2, 4.5]);
    expect(out.max!.data[0]).toBe(4.5);
    expect(out.mean!.data[0]).toBeCloseTo(7.5 / 3, 6);
  });

  it('weights the map by the mask twice and the mean once (reference semantics for depth modes)', async () => {
    const g = new Graph('masked');
    const a = g.input('zt', 'float32', [1, 2, 1, 3]);
    const b = g.input('zs', 'float32', [1, 2, 1, 3]);
    const mask = g.input('mask', 'float32', [1, 1, 1, 3]);
    const m = buildAnomalyMap(g, a, b, mask);
    const s = buildImageScores(g, m);
    g.output(m.map, 'map');
    g.output(s.max, 'max');
    g.output(s.mean, 'mean');
    const out = await runGraph(g, { zt, zs, mask: f32([1, 1, 1, 3], [1, 0.5, 0]) });
    expect(Array.from(out.map!.data)).toEqual([1, 0.5, 0]);
    expect(out.max!.data[0]).toBe(1);
    expect(out.mean!.data[0]).toBeCloseTo((1 + 1) / 3, 6);
  });

  it('upsamples a constant map to a constant, smoothed or not', async () => {
    for (const sigma of [0, 2]) {
      const g = new Graph('up');
      const m = g.input('m', 'float32', [2, 1, 4, 4]);
      g.output(buildUpsampledMap(g, m, 32, 32, sigma), 'up');
      const out = await runGraph(g, { m: f32([2, 1, 4, 4], new Array(32).fill(0.25)) });
      expect(out.up!.dims).toEqual([2, 1, 32, 32]);
      for (const v of out.up!.data) expect(v).toBeCloseTo(0.25, 5);
    }
  });

  it('Gaussian taps are symmetric, sum to 1 and reach 4 sigma', () => {
    const k = gaussianKernel(4);
    expect(k.length).toBe(33);
    expect(k.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    expect(k[0]).toBeCloseTo(k[32]!, 9);
    expect(k[16]).toBeCloseTo(1 / (Math.sqrt(2 * Math.PI) * 4), 2);
  });
});

describe('positional encoding', () => {
  it('puts sin/cos of the column in the first half and of the row in the second', () => {
    const pe = positionalEncoding(32, 3, 5);
    const at = (c: number, y: number, x: number) => pe.data[c * 15 + y * 5 + x]!;
    expect(at(0, 2, 3)).toBeCloseTo(Math.sin(3), 6);
    expect(at(1, 2, 3)).toBeCloseTo(Math.cos(3), 6);
    // k = 2: frequency exp(−2·ln(10⁴)/16) = 10^(−0.5)
    expect(at(2, 1, 4)).toBeCloseTo(Math.sin(4 * 10 ** -0.5), 6);
    expect(at(16, 2, 3)).toBeCloseTo(Math.sin(2), 6);
    expect(at(17, 2, 3)).toBeCloseTo(Math.cos(2), 6);
    expect(at(31, 1, 0)).toBeCloseTo(Math.cos(1 * Math.exp((-14 * Math.log(10000)) / 16)), 6);
  });
});

describe('normalised score and verdict', () => {
  const cal = { threshold: 2, goodStd: 0.5 };
  it('puts the threshold at exactly 0.5 and is monotonic', () => {
    expect(normalizeScore(2, cal)).toBe(0.5);
    expect(normalizeScore(2.5, cal)).toBeCloseTo(1 / (1 + Math.exp(-1)), 12);
    expect(normalizeScore(1, cal)).toBeLessThan(normalizeScore(1.5, cal));
  });
  it('rejects at and above the threshold, and never passes NaN', () => {
    expect(verdictFor(1.999, 2)).toBe('pass');
    expect(verdictFor(2, 2)).toBe('reject');
    expect(verdictFor(Number.NaN, 2)).toBe('reject');
    expect(verdictFor(Number.POSITIVE_INFINITY, 2)).toBe('reject');
  });
  it('converts a normalised threshold back to a raw one', () => {
    expect(rawThresholdFromNormalized(0.5, cal)).toBeCloseTo(2, 12);
    const raw = rawThresholdFromNormalized(0.8, cal);
    expect(normalizeScore(raw, cal)).toBeCloseTo(0.8, 12);
    expect(() => rawThresholdFromNormalized(1, cal)).toThrow(/\(0, 1\)/);
  });
  it('judges with the calibrated threshold or a run-time override', () => {
    expect(judge(2.2, cal)).toMatchObject({ verdict: 'reject', threshold: 2 });
    const relaxed = judge(2.2, cal, 2.5);
    expect(relaxed.verdict).toBe('pass');
    expect(relaxed.normalized).toBeLessThan(0.5);
  });
});
