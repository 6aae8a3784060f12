/**
 * Calibration: from held-out scores, the raw threshold at and above which a part is rejected, plus the
 * good-score statistics that normalise scores so the threshold reads 0.5 (`normalizeScore` in
 * src/model/verdict.ts). The result is a `Calibration` as stored in the bundle manifest, so training and
 * deployment apply the same numbers with the same rule (reject when raw ≥ threshold).
 *
 * Two methods:
 * - 'false-reject-rate' (goods only): at most ⌊target · n⌋ of the n held-out goods may be rejected. With
 *   n goods, only multiples of 1/n are observable, so a target below 1/n means "reject none of them" and
 *   the threshold goes above the highest good score. The threshold is placed halfway between the highest
 *   good that must pass and the next higher good score, so a score that moves by float round-off (fp16 vs
 *   fp32, another graph) does not flip the verdict of a held-out good; above the maximum, where there is no
 *   next score, it goes a relative 1e-6 (at least one ulp) above it.
 * - 'best-f1' (goods + labelled defects): the threshold maximising F1 (defect = positive) on the given
 *   scores, placed halfway between the lowest rejected and the highest passed score; ties in F1 go to the
 *   higher threshold (fewer false rejects).
 */
import { CalibrationSchema, describeIssues, type Calibration } from '../../config/bundle-manifest.js';

export class CalibrationError extends Error {
  constructor(
    message: string,
    /** The input at fault, e.g. `goodScores[3]` or `targetFalseRejectRate`. */
    readonly field?: string,
  ) {
    super(message);
    this.name = 'CalibrationError';
  }
}

export type CalibrateOptions =
  | { method: 'false-reject-rate'; targetFalseRejectRate: number }
  | { method: 'best-f1'; defectScores: ArrayLike<number> };

/** Relative margin above the highest good score when none may be rejected (covers fp32/fp16 round-off). */
export const ABOVE_MAX_MARGIN = 1e-6;

function finiteSorted(scores: ArrayLike<number>, name: string): Float64Array {
  const out = new Float64Array(scores.length);
  for (let i = 0; i < scores.length; i++) {
    const v = scores[i]!;
    if (!Number.isFinite(v)) throw new CalibrationError(`${name}[${i}] is ${v}; calibration needs finite scores`, `${name}[${i}]`);
    out[i] = v;
  }
  return out.sort();
}

/** The smallest double strictly greater than x (x finite). */
export function nextUp(x: number): number {
  if (x === 0) return Number.MIN_VALUE;
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  const bits = view.getBigInt64(0);
  view.setBigInt64(0, x > 0 ? bits + 1n : bits - 1n);
  return view.getFloat64(0);
}

/** A threshold strictly between a (passes) and b (rejected), a < b: the midpoint, guarded against rounding onto a. */
function between(a: number, b: number): number {
  const mid = a + (b - a) / 2;
  return mid > a ? mid : b;
}

/** Strictly above the maximum good score: relative margin, at least one ulp. */
function above(max: number): number {
  return Math.max(max + ABOVE_MAX_MARGIN * Math.abs(max), nextUp(max));
}

/**
 * Mean and sample standard deviation (n − 1) of the good scores. The manifest requires goodStd > 0 (it
 * divides the normalised score), so a degenerate spread — one sample, or all goods equal — is replaced by
 * a floor of 1e-6 of the score scale (at least 1e-12): normalised scores then act as a sharp step at the
 * threshold, which is all that such data supports.
 */
export function goodScoreStatistics(goodScores: ArrayLike<number>, threshold = 0): { goodMean: number; goodStd: number } {
  const n = goodScores.length;
  if (n === 0) throw new CalibrationError('calibration needs at least one held-out good score', 'goodScores');
  let sum = 0;
  for (let i = 0; i < n; i++) sum += goodScores[i]!;
  const goodMean = sum / n;
  let ss = 0;
  for (let i = 0; i < n; i++) ss += (goodScores[i]! - goodMean) ** 2;
  const std = n > 1 ? Math.sqrt(ss / (n - 1)) : 0;
  const floor = Math.max(1e-6 * Math.max(Math.abs(goodMean), Math.abs(threshold)), 1e-12);
  return { goodMean, goodStd: Number.isFinite(std) && std > floor ? std : floor };
}

function finish(draft: Calibration): Calibration {
  const parsed = CalibrationSchema.safeParse(draft);
  if (!parsed.success) {
    // Practically: a negative threshold, i.e. negative raw scores, which AST (squared distances) never gives.
    throw new CalibrationError(`the calibration would be invalid (${describeIssues(parsed.error)}); raw anomaly scores must be ≥ 0`, 'goodScores');
  }
  return parsed.data;
}

/** Threshold for a target false-reject rate on held-out goods (see the module comment for the rule). */
export function calibrateForFalseRejectRate(goodScores: ArrayLike<number>, targetFalseRejectRate: number): Calibration {
  if (!(targetFalseRejectRate >= 0 && targetFalseRejectRate <= 1)) {
    throw new CalibrationError(`targetFalseRejectRate must be in [0, 1], got ${targetFalseRejectRate}`, 'targetFalseRejectRate');
  }
  const goods = finiteSorted(goodScores, 'goodScores');
  const n = goods.length;
  if (n === 0) throw new CalibrationError('calibration needs at least one held-out good score', 'goodScores');
  // Goods allowed to be rejected; the epsilon keeps 0.29 · 100 = 28.999999999999996 from losing one.
  const allowed = Math.min(n, Math.floor(targetFalseRejectRate * n + 1e-9));
  let threshold: number;
  if (allowed === n) {
    threshold = goods[0]!; // every good may be rejected: the lowest good score itself (rejected at ≥)
  } else {
    // goods[n − 1 − allowed] must pass; reject only scores above it. With ties at that value the next
    // distinct score is used, so fewer than `allowed` goods may be rejected — never more.
    const mustPass = goods[n - 1 - allowed]!;
    let k = n - allowed;
    while (k < n && goods[k]! === mustPass) k++;
    threshold = k < n ? between(mustPass, goods[k]!) : above(mustPass);
  }
  return finish({ threshold, ...goodScoreStatistics(goods, threshold), method: 'false-reject-rate', targetFalseRejectRate, samples: n });
}

/** Threshold maximising F1 on held-out goods and labelled defects (defect = positive, reject at ≥). */
export function calibrateForBestF1(goodScores: ArrayLike<number>, defectScores: ArrayLike<number>): Calibration {
  const goods = finiteSorted(goodScores, 'goodScores');
  const defects = finiteSorted(defectScores, 'defectScores');
  if (goods.length === 0) throw new CalibrationError('best-F1 calibration needs at least one held-out good score', 'goodScores');
  if (defects.length === 0) throw new CalibrationError('best-F1 calibration needs at least one labelled defect score', 'defectScores');
  // Walk the distinct scores from the top; after each group, everything at or above it is rejected.
  let i = defects.length - 1;
  let j = goods.length - 1;
  let tp = 0;
  let fp = 0;
  let best = -1;
  let bestLow = NaN; // lowest rejected score at the best cut
  let bestNext = -Infinity; // highest passed score at the best cut (−∞: everything rejected)
  while (i >= 0 || j >= 0) {
    const v = Math.max(i >= 0 ? defects[i]! : -Infinity, j >= 0 ? goods[j]! : -Infinity);
    while (i >= 0 && defects[i]! === v) (tp++, i--);
    while (j >= 0 && goods[j]! === v) (fp++, j--);
    const fn = defects.length - tp;
    const f1 = (2 * tp) / (2 * tp + fp + fn);
    if (f1 > best) {
      best = f1;
      bestLow = v;
      bestNext = Math.max(i >= 0 ? defects[i]! : -Infinity, j >= 0 ? goods[j]! : -Infinity);
    }
  }
  const threshold = bestNext === -Infinity ? bestLow : between(bestNext, bestLow);
  return finish({ threshold, ...goodScoreStatistics(goods, threshold), method: 'best-f1', samples: goods.length + defects.length });
}

/** Calibrates with the chosen method; the result validates against the manifest's CalibrationSchema. */
export function calibrate(goodScores: ArrayLike<number>, options: CalibrateOptions): Calibration {
  switch (options.method) {
    case 'false-reject-rate':
      return calibrateForFalseRejectRate(goodScores, options.targetFalseRejectRate);
    case 'best-f1':
      return calibrateForBestF1(goodScores, options.defectScores);
    default:
      throw new CalibrationError(`unknown calibration method ${(options as { method: unknown }).method}`, 'method');
  }
}
