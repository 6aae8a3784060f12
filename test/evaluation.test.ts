import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CalibrationSchema } from '../src/config/bundle-manifest.js';
import { normalizeScore, verdictFor } from '../src/model/verdict.js';
import {
  BinnedPixelAuroc,
  EvaluationError,
  PixelAurocAccumulator,
  auroc,
  perDefectType,
  pixelAuroc,
  rocCurve,
  thresholdMetrics,
  type Label,
} from '../src/train/evaluation/metrics.js';
import {
  CalibrationError,
  calibrate,
  calibrateForBestF1,
  calibrateForFalseRejectRate,
  goodScoreStatistics,
  nextUp,
} from '../src/train/evaluation/calibration.js';
import { histogramSvg, niceTicks, rocChartSvg, ROC_SIZE, HISTOGRAM_SIZE } from '../src/train/evaluation/charts.js';
import { INFERNO_LUT, maskOutline, renderOverlayPng, resizeBilinear } from '../src/train/evaluation/overlay.js';
import { EvaluationMetricsSchema, manifestMetrics, writeReport, type ReportSample } from '../src/train/evaluation/report.js';

/** Deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** AUROC by brute force over all pairs (ties ½): the definition, O(P·N). */
function pairwiseAuroc(scores: ArrayLike<number>, labels: ArrayLike<number>): number {
  let u = 0;
  let pairs = 0;
  for (let i = 0; i < scores.length; i++) {
    if (labels[i] !== 1) continue;
    for (let j = 0; j < scores.length; j++) {
      if (labels[j] !== 0) continue;
      pairs++;
      u += scores[i]! > scores[j]! ? 1 : scores[i] === scores[j] ? 0.5 : 0;
    }
  }
  return u / pairs;
}

/** Area under the ROC points by trapezoids. */
function trapezoid(fpr: number[], tpr: number[]): number {
  let a = 0;
  for (let k = 1; k < fpr.length; k++) a += ((fpr[k]! - fpr[k - 1]!) * (tpr[k]! + tpr[k - 1]!)) / 2;
  return a;
}

describe('AUROC', () => {
  it('is 1 for a perfect ranking, 0 for an inverted one, ½ when everything ties', () => {
    expect(auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])).toBe(1);
    expect(auroc([0.8, 0.9, 0.1, 0.2], [0, 0, 1, 1])).toBe(0);
    expect(auroc([3, 3, 3, 3, 3], [0, 1, 0, 1, 1])).toBe(0.5);
  });

  it('matches hand-computed values', () => {
    // Pairs (defect, good): (0.35, 0.1) ✓, (0.35, 0.4) ✗, (0.8, 0.1) ✓, (0.8, 0.4) ✓ → 3/4.
    expect(auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])).toBe(0.75);
    // Defects {1, 2}, goods {1, 0}: (1,1) ½, (1,0) 1, (2,1) 1, (2,0) 1 → 3.5/4. Average ranks: 0→1, 1,1→2.5, 2→4;
    // U = (2.5 + 4) − 2·3/2 = 3.5.
    expect(auroc([1, 2, 1, 0], [1, 1, 0, 0])).toBe(0.875);
  });

  it('equals the pairwise definition on random data with many ties', () => {
    const r = rng(7);
    const n = 300;
    const scores = Array.from({ length: n }, () => Math.round(r() * 20) / 4);
    const labels = Array.from({ length: n }, (_, i) => (r() < 0.3 + (scores[i]! / 5) * 0.4 ? 1 : 0) as Label);
    expect(auroc(scores, labels)).toBeCloseTo(pairwiseAuroc(scores, labels), 14);
  });

  it('refuses one-class data, NaN scores and bad labels with typed errors', () => {
    expect(() => auroc([1, 2], [0, 0])).toThrow(EvaluationError);
    expect(() => auroc([1, Number.NaN], [0, 1])).toThrow(/scores\[1\] is NaN/);
    expect(() => auroc([1, 2], [0, 2 as Label])).toThrow(/labels\[1\]/);
    expect(() => auroc([1, 2, 3], [0, 1])).toThrow(/differ in length/);
  });
});

describe('ROC curve', () => {
  it('runs from (0,0) at +∞ to (1,1) through every distinct threshold', () => {
    const roc = rocCurve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]);
    expect(roc.thresholds).toEqual([Infinity, 0.8, 0.4, 0.35, 0.1]);
    expect(roc.fpr).toEqual([0, 0, 0.5, 0.5, 1]);
    expect(roc.tpr).toEqual([0, 0.5, 0.5, 1, 1]);
  });

  it('has the AUROC as its trapezoid area (ties become diagonal segments), also when thinned', () => {
    const r = rng(3);
    const scores = Array.from({ length: 500 }, () => Math.floor(r() * 40));
    const labels = scores.map((s) => (r() < s / 50 ? 1 : 0) as Label);
    const roc = rocCurve(scores, labels);
    expect(trapezoid(roc.fpr, roc.tpr)).toBeCloseTo(auroc(scores, labels), 12);
    const thin = rocCurve(scores, labels, 10);
    expect(thin.fpr.length).toBeLessThanOrEqual(12);
    expect(thin.fpr.length).toBeLessThan(roc.fpr.length);
    expect([thin.fpr[0], thin.tpr[0], thin.fpr.at(-1), thin.tpr.at(-1)]).toEqual([0, 0, 1, 1]);
  });
});

describe('pixel AUROC', () => {
  const r = rng(11);
  const maps: Float32Array[] = [];
  const masks: Uint8Array[] = [];
  for (let k = 0; k < 12; k++) {
    const map = new Float32Array(32 * 32);
    const mask = new Uint8Array(32 * 32);
    for (let i = 0; i < map.length; i++) {
      mask[i] = k % 3 === 0 && i % 32 < 8 && i < 256 ? 255 : 0;
      // quantised values make plenty of ties across classes
      map[i] = Math.round((r() + (mask[i] ? 0.6 : 0)) * 16) / 16;
    }
    maps.push(map);
    masks.push(mask);
  }
  const flatScores = new Float32Array(maps.length * 1024);
  const flatLabels = new Array<Label>(maps.length * 1024);
  maps.forEach((m, k) => flatScores.set(m, k * 1024));
  masks.forEach((m, k) => m.forEach((v, i) => (flatLabels[k * 1024 + i] = v ? 1 : 0)));

  it('equals image-style AUROC on the flattened arrays', () => {
    const acc = new PixelAurocAccumulator(16); // tiny capacity: exercises regrowing
    maps.forEach((m, k) => acc.add(m, masks[k]!));
    const res = acc.result();
    expect(res.auroc).toBe(auroc(flatScores, flatLabels));
    expect(res).toMatchObject({ pixels: 12 * 1024, defectPixels: 4 * 64, method: 'exact', errorBound: 0 });
    expect(pixelAuroc(maps, masks).auroc).toBe(res.auroc);
    const curve = acc.curve(100);
    expect(trapezoid(curve.fpr, curve.tpr)).toBeCloseTo(res.auroc, 2);
    expect(curve.fpr.length).toBeLessThanOrEqual(102);
  });

  it('binned: within its own reported error bound of the exact value', () => {
    const binned = new BinnedPixelAuroc(0, 2, 1000);
    maps.forEach((m, k) => binned.add(m, masks[k]!));
    const exact = auroc(flatScores, flatLabels);
    const res = binned.result();
    expect(res.method).toBe('binned');
    expect(Math.abs(res.auroc - exact)).toBeLessThanOrEqual(res.errorBound + 1e-15);
    // the values are multiples of 1/16, so 1000 bins over [0, 2] put each value in a bin of its own → exact
    expect(res.auroc).toBeCloseTo(exact, 12);
    const coarse = new BinnedPixelAuroc(0, 2, 4);
    maps.forEach((m, k) => coarse.add(m, masks[k]!));
    const c = coarse.result();
    expect(c.errorBound).toBeGreaterThan(0);
    expect(Math.abs(c.auroc - exact)).toBeLessThanOrEqual(c.errorBound);
  });

  it('refuses a mask of another size', () => {
    expect(() => new PixelAurocAccumulator().add(new Float32Array(4), new Uint8Array(5))).toThrow(EvaluationError);
  });
});

describe('threshold metrics', () => {
  it('counts with the deployed rule (reject at or above; NaN rejects)', () => {
    // threshold 0.35: goods 0.1 pass, 0.4 rejected; defects 0.35 (exactly at) and 0.8 rejected.
    expect(thresholdMetrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.35)).toEqual({
      threshold: 0.35,
      tp: 2,
      fp: 1,
      tn: 1,
      fn: 0,
      falseRejectRate: 0.5,
      escapeRate: 0,
      precision: 2 / 3,
      recall: 1,
      f1: 0.8,
      accuracy: 0.75,
    });
    const m = thresholdMetrics([0.1, Number.NaN, 0.2, 0.9, 0.5], [0, 0, 1, 1, 1], 0.5);
    expect([m.tp, m.fp, m.tn, m.fn]).toEqual([2, 1, 1, 1]);
    expect(m.escapeRate).toBeCloseTo(1 / 3, 15);
  });

  it('reports undefined rates as null', () => {
    const m = thresholdMetrics([0.1, 0.2], [0, 0], 1);
    expect(m).toMatchObject({ falseRejectRate: 0, escapeRate: null, precision: null, recall: null, f1: null, accuracy: 1 });
  });

  it('per defect type: each type against all goods', () => {
    const rows = perDefectType(
      [
        { defectType: 'good', label: 0, score: 1 },
        { defectType: 'good', label: 0, score: 3 },
        { defectType: 'scratch', label: 1, score: 2 },
        { defectType: 'scratch', label: 1, score: 4 },
        { defectType: 'color', label: 1, score: 5 },
      ],
      3,
    );
    expect(rows).toEqual([
      { defectType: 'color', count: 1, auroc: 1, meanScore: 5, escapes: 0, escapeRate: 0 },
      { defectType: 'scratch', count: 2, auroc: 0.75, meanScore: 3, escapes: 1, escapeRate: 0.5 },
    ]);
  });
});

describe('calibration', () => {
  it('target 0: the threshold is above the highest good score and every held-out good passes', () => {
    const goods = [0.2, 0.5, 0.31, 0.5, 0.44];
    const c = calibrateForFalseRejectRate(goods, 0);
    expect(c.threshold).toBeGreaterThan(0.5);
    expect(c.threshold).toBeLessThan(0.5 + 1e-5);
    expect(goods.every((s) => verdictFor(s, c.threshold) === 'pass')).toBe(true);
    // fewer goods than 1/target: the same rule (⌊0.01 · 20⌋ = 0 goods may be rejected)
    const twenty = Array.from({ length: 20 }, (_, i) => i / 10);
    expect(calibrateForFalseRejectRate(twenty, 0.01).threshold).toBeGreaterThan(1.9);
    expect(calibrateForFalseRejectRate([0], 0).threshold).toBeGreaterThan(0);
  });

  it('target 0.1 on 100 known scores rejects exactly 10, halfway between the 90th and 91st', () => {
    const r = rng(5);
    const goods = Array.from({ length: 100 }, (_, i) => i + 1).sort(() => r() - 0.5); // 1..100 shuffled
    const c = calibrateForFalseRejectRate(goods, 0.1);
    expect(c.threshold).toBe(90.5);
    expect(thresholdMetrics(goods, new Array<Label>(100).fill(0), c.threshold).falseRejectRate).toBe(0.1);
    expect(c).toMatchObject({ method: 'false-reject-rate', targetFalseRejectRate: 0.1, samples: 100, goodMean: 50.5 });
    expect(c.goodStd).toBeCloseTo(Math.sqrt((100 * 101) / 12), 10); // sample std of 1..100
    expect(CalibrationSchema.parse(c)).toEqual(c);
    expect(normalizeScore(c.threshold, c)).toBe(0.5);
    // 0.29 · 100 is 28.999999999999996 in floating point; still 29 goods may be rejected
    expect(calibrateForFalseRejectRate(goods, 0.29).threshold).toBe(71.5);
  });

  it('never rejects more goods than the target allows when scores tie', () => {
    // ⌊0.4 · 5⌋ = 2 may be rejected, but the 3rd-highest ties the 2nd: only the 3 goes.
    const c = calibrateForFalseRejectRate([1, 2, 2, 2, 3], 0.4);
    expect(c.threshold).toBe(2.5);
    expect(calibrateForFalseRejectRate([1, 2, 3], 1).threshold).toBe(1);
  });

  it('best F1 on a separable set sits in the middle of the gap', () => {
    const c = calibrateForBestF1([0.1, 0.2, 0.3, 0.5], [0.9, 1.0, 1.2]);
    expect(c.threshold).toBeCloseTo(0.7, 15);
    expect(c).toMatchObject({ method: 'best-f1', samples: 7 });
    expect(c.targetFalseRejectRate).toBeUndefined();
    expect(thresholdMetrics([0.1, 0.2, 0.3, 0.5, 0.9, 1.0, 1.2], [0, 0, 0, 0, 1, 1, 1], c.threshold).f1).toBe(1);
    expect(CalibrationSchema.parse(c)).toEqual(c);
  });

  it('best F1 on overlapping scores matches an exhaustive search', () => {
    const r = rng(9);
    const goods = Array.from({ length: 60 }, () => r());
    const defects = Array.from({ length: 25 }, () => 0.5 + r());
    const c = calibrate(goods, { method: 'best-f1', defectScores: defects });
    const scores = [...goods, ...defects];
    const labels = [...goods.map(() => 0 as Label), ...defects.map(() => 1 as Label)];
    const best = Math.max(...scores.map((t) => thresholdMetrics(scores, labels, t).f1!));
    expect(thresholdMetrics(scores, labels, c.threshold).f1).toBe(best);
  });

  it('keeps goodStd > 0 for degenerate data and refuses bad input', () => {
    const same = calibrateForFalseRejectRate([0.4, 0.4, 0.4], 0);
    expect(same.goodStd).toBeGreaterThan(0);
    expect(CalibrationSchema.safeParse(same).success).toBe(true);
    expect(goodScoreStatistics([0]).goodStd).toBeGreaterThan(0);
    expect(() => calibrateForFalseRejectRate([1, 2], 1.5)).toThrow(CalibrationError);
    expect(() => calibrateForFalseRejectRate([], 0.1)).toThrow(/at least one/);
    expect(() => calibrateForFalseRejectRate([1, Number.NaN], 0.1)).toThrow(/goodScores\[1\]/);
    expect(() => calibrateForBestF1([1], [])).toThrow(/defect/);
    expect(() => calibrateForFalseRejectRate([-3, -2], 0)).toThrow(/≥ 0/);
    expect(nextUp(1)).toBe(1 + Number.EPSILON);
  });
});

describe('charts and overlays', () => {
  it('nice ticks cover the range with 1-2-5 steps', () => {
    expect(niceTicks(0, 1, 5).ticks).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(niceTicks(0.13, 1.87, 5)).toMatchObject({ min: 0, max: 2 });
  });

  it('SVGs escape text and rasterise at their declared size', async () => {
    const svg = rocChartSvg({ title: 'a < b & "c"', series: [{ label: 'x', curve: rocCurve([1, 2], [0, 1]), auroc: 1 }] });
    expect(svg).toContain('a &lt; b &amp; &quot;c&quot;');
    const meta = await sharp(Buffer.from(svg)).metadata();
    expect([meta.width, meta.height]).toEqual([ROC_SIZE.width, ROC_SIZE.height]);
    const h = await sharp(Buffer.from(histogramSvg({ title: 't', xTitle: 'x', good: [1, 2], defective: [], threshold: 1.5 }))).metadata();
    expect([h.width, h.height]).toEqual([HISTOGRAM_SIZE.width, HISTOGRAM_SIZE.height]);
  });

  it('inferno runs dark to bright; resizing and outlines behave', async () => {
    const lum = (i: number) => 0.299 * INFERNO_LUT[i * 3]! + 0.587 * INFERNO_LUT[i * 3 + 1]! + 0.114 * INFERNO_LUT[i * 3 + 2]!;
    expect(lum(0)).toBeLessThan(10);
    expect(lum(255)).toBeGreaterThan(230);
    for (let i = 8; i < 256; i += 8) expect(lum(i)).toBeGreaterThan(lum(i - 8));
    expect(Array.from(resizeBilinear([1, 3], 2, 1, 4, 1))).toEqual([1, 1.5, 2.5, 3]);
    // 3×3 mask with the centre set: the ring outside it is its 4 neighbours
    expect(Array.from(maskOutline(new Uint8Array([0, 0, 0, 0, 1, 0, 0, 0, 0]), 3, 3, 1))).toEqual([0, 1, 0, 1, 0, 1, 0, 1, 0]);
    // a 28×28 grey image with a 7×7 map and mask (feature resolution) and no image at all both render
    const grey = await renderOverlayPng({
      image: { rgb: new Uint8Array(28 * 28).fill(128), width: 28, height: 28, channels: 1 },
      map: { data: new Float32Array(49).fill(0.5), width: 7, height: 7 },
      mask: new Uint8Array(49).fill(0).fill(1, 20, 23),
      range: [0, 1],
      caption: ['grey'],
    });
    expect(grey.height).toBe(50 + 252 + 64);
    const alone = await renderOverlayPng({ map: { data: new Float32Array(64 * 64), width: 64, height: 64 }, range: [0, 1], caption: ['map only'] });
    const meta = await sharp(alone.png).metadata();
    expect([meta.width, meta.height]).toEqual([alone.width, alone.height]);
  });
});

describe('report folder', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'ast-eval-test-'));
  });
  afterAll(async () => {
    if (!process.env.KEEP_EVAL_REPORT) await rm(root, { recursive: true, force: true });
  });

  /** 64×64 textured parts; defects (spots, scratches) get a mask and a hot map, one good a hot spot. */
  function dataset(): ReportSample[] {
    const r = rng(1);
    const W = 64;
    const make = (i: number, type: 'good' | 'spot' | 'scratch'): ReportSample => {
      const rgb = new Uint8Array(W * W * 3);
      const map = new Float32Array(W * W);
      const mask = new Uint8Array(W * W);
      const cx = 12 + r() * 40;
      const cy = 12 + r() * 40;
      const radius = 4 + r() * 5;
      const amp = type === 'good' ? (i === 0 ? 0.9 : 0) : 0.3 + r();
      for (let y = 0; y < W; y++) {
        for (let x = 0; x < W; x++) {
          const p = y * W + x;
          const d2 = (x - cx) ** 2 + (y - cy) ** 2;
          const inside = type === 'spot' ? d2 < radius * radius : type === 'scratch' ? Math.abs(x - cx - (y - cy)) < 1.5 && d2 < 300 : false;
          const base = 120 + 40 * Math.sin(x / 3) * Math.cos(y / 5) + 20 * r();
          mask[p] = inside ? 255 : 0;
          rgb.set(inside ? [200, 60, 40] : [base, base * 0.9, base * 0.7], p * 3);
          map[p] = 0.1 * r() + (type === 'good' ? amp * Math.exp(-d2 / 30) : inside ? amp : 0.5 * amp * Math.exp(-d2 / 60));
        }
      }
      const scoreMax = map.reduce((a, b) => Math.max(a, b), 0);
      const scoreMean = map.reduce((a, b) => a + b, 0) / map.length;
      return {
        id: `${type}/${String(i).padStart(3, '0')}.png`,
        defectType: type,
        label: type === 'good' ? 0 : 1,
        scoreMax,
        scoreMean,
        image: () => ({ rgb, width: W, height: W }), // lazy, as a dataset loader would give it
        map: () => ({ data: map, width: W, height: W }),
        ...(type === 'good' ? {} : { mask }),
      };
    };
    return [
      ...Array.from({ length: 16 }, (_, i) => make(i, 'good')),
      ...Array.from({ length: 8 }, (_, i) => make(i, 'spot')),
      ...Array.from({ length: 8 }, (_, i) => make(i, 'scratch')),
    ];
  }

  it('writes metrics.json, roc.png, histogram.png and overlays with the right numbers', async () => {
    const samples = dataset();
    const goods = samples.filter((s) => s.label === 0);
    const calibration = calibrateForFalseRejectRate(goods.slice(1).map((s) => s.scoreMax), 0);
    const dir = join(root, 'report');
    const metrics = await writeReport(dir, { samples, threshold: calibration.threshold, calibration, scoreKind: 'max', worstCount: 2, title: 'synthetic' });

    const onDisk = EvaluationMetricsSchema.parse(JSON.parse(await readFile(join(dir, 'metrics.json'), 'utf8')));
    expect(onDisk).toEqual(metrics);
    const labels = samples.map((s) => s.label);
    expect(metrics.image.aurocMax).toBe(auroc(samples.map((s) => s.scoreMax), labels));
    expect(metrics.image.aurocMean).toBe(auroc(samples.map((s) => s.scoreMean), labels));
    const maps = await Promise.all(samples.map(async (s) => (await (s.map as () => { data: Float32Array })()).data));
    const masks = samples.map((s) => (s.mask as Uint8Array | undefined) ?? new Uint8Array(64 * 64));
    expect(metrics.pixel).toMatchObject({ auroc: pixelAuroc(maps, masks).auroc, pixels: 32 * 4096, images: 32, method: 'exact' });
    expect(metrics.atThreshold).toEqual(thresholdMetrics(samples.map((s) => s.scoreMax), labels, calibration.threshold));
    expect(metrics.counts).toEqual({ samples: 32, good: 16, defective: 16, defectTypes: { spot: 8, scratch: 8 }, withMap: 32, withMask: 16 });
    expect(metrics.perDefectType.map((r) => [r.defectType, r.count])).toEqual([['scratch', 8], ['spot', 8]]);
    // The hot good is calibrated out (held out of calibration), so it is the top false-reject candidate and a false reject.
    expect(metrics.worst.falseRejectCandidates[0]).toMatchObject({ id: 'good/000.png', verdict: 'reject', rank: 1 });
    expect(metrics.atThreshold.fp).toBe(1);
    const lowest = Math.min(...samples.filter((s) => s.label === 1).map((s) => s.scoreMax));
    expect(metrics.worst.escapeCandidates[0]!.score).toBe(lowest);
    expect(metrics.worst.topDefects).toHaveLength(2);
    expect(manifestMetrics(metrics)).toMatchObject({ imageAurocMax: metrics.image.aurocMax!, pixelAuroc: metrics.pixel!.auroc });

    const roc = await sharp(join(dir, 'roc.png')).metadata();
    expect([roc.format, roc.width, roc.height]).toEqual(['png', ROC_SIZE.width, ROC_SIZE.height]);
    const hist = await sharp(join(dir, 'histogram.png')).metadata();
    expect([hist.format, hist.width, hist.height]).toEqual(['png', HISTOGRAM_SIZE.width, HISTOGRAM_SIZE.height]);
    expect(metrics.files.overlays).toHaveLength(6);
    expect(metrics.files.overlays[0]).toBe('overlays/false-reject-01-good_000.png');
    for (const f of metrics.files.overlays) {
      const m = await sharp(join(dir, f)).metadata();
      // 64² shown ×4 = 256², two panels side by side, caption above, colour bar below
      expect([m.format, m.width, m.height]).toEqual(['png', 2 * 256 + 3 * 10, 50 + 256 + 64]);
    }
    // the overlay of a defect shows the cyan outline of its mask
    const { data } = await sharp(join(dir, metrics.worst.topDefects[0]!.file!)).raw().toBuffer({ resolveWithObject: true });
    let cyan = 0;
    for (let i = 0; i < data.length; i += 3) if (data[i]! < 30 && data[i + 1]! > 230 && data[i + 2]! > 230) cyan++;
    expect(cyan).toBeGreaterThan(50);

    // writing again replaces the report (no stale overlays), and leaves no staging folders behind
    await writeReport(dir, { samples, threshold: calibration.threshold, scoreKind: 'mean', worstCount: 1 });
    const again = EvaluationMetricsSchema.parse(JSON.parse(await readFile(join(dir, 'metrics.json'), 'utf8')));
    expect(again.scoreKind).toBe('mean');
    expect(again.files.overlays).toHaveLength(3);
    expect(existsSync(join(dir, 'overlays', 'false-reject-02-good_000.png'))).toBe(false);
    const { readdir } = await import('node:fs/promises');
    expect((await readdir(root)).filter((n) => n.startsWith('.tmp-') || n.includes('.old-'))).toEqual([]);
  });

  it('handles goods only (no AUROC, no ROC) and refuses to overwrite a folder that is not a report', async () => {
    const goods = dataset().filter((s) => s.label === 0).map((s) => ({ ...s, map: undefined, image: undefined }));
    const metrics = await writeReport(join(root, 'goods'), { samples: goods, threshold: 1, scoreKind: 'max' });
    expect(metrics.image).toEqual({ aurocMax: null, aurocMean: null });
    expect(metrics.pixel).toBeNull();
    expect(metrics.files.roc).toBeNull();
    expect(metrics.worst.falseRejectCandidates.every((w) => w.file === null)).toBe(true);
    expect(existsSync(join(root, 'goods', 'histogram.png'))).toBe(true);

    const precious = join(root, 'precious');
    await mkdir(precious);
    await writeFile(join(precious, 'notes.txt'), 'keep me');
    await expect(writeReport(precious, { samples: goods, threshold: 1, scoreKind: 'max' })).rejects.toThrow(/not a report folder/);
    expect(await readFile(join(precious, 'notes.txt'), 'utf8')).toBe('keep me');
    await expect(writeReport(join(root, 'bad'), { samples: [{ ...goods[0]!, scoreMax: Number.NaN }], threshold: 1, scoreKind: 'max' })).rejects.toThrow(
      /scoreMax is NaN/,
    );
  });
});
