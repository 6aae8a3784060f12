/**
 * From raw image score to what the line acts on. The threshold and the good-score spread travel with
 * the model (bundle calibration), and the threshold can be overridden at run time.
 */
import type { Calibration } from '../config/bundle-manifest.js';

export type Verdict = 'pass' | 'reject';

/**
 * Maps a raw score onto (0, 1) with the threshold at exactly 0.5: sigmoid((raw − threshold) / goodStd).
 * Monotonic, so comparing normalised scores to 0.5 and raw scores to the threshold agree; one good-score
 * standard deviation above the threshold reads ≈ 0.73.
 */
export function normalizeScore(raw: number, calibration: Pick<Calibration, 'threshold' | 'goodStd'>): number {
  const x = (raw - calibration.threshold) / calibration.goodStd;
  return 1 / (1 + Math.exp(-x));
}

/** A part is rejected at or above the threshold; NaN (a broken model) is never a pass. */
export function verdictFor(raw: number, threshold: number): Verdict {
  return Number.isFinite(raw) && raw < threshold ? 'pass' : 'reject';
}

/** The raw threshold that corresponds to a normalised one (for "set the threshold to 0.6"). */
export function rawThresholdFromNormalized(normalized: number, calibration: Pick<Calibration, 'threshold' | 'goodStd'>): number {
  if (!(normalized > 0 && normalized < 1)) throw new RangeError(`normalised threshold must be in (0, 1), got ${normalized}`);
  return calibration.threshold + calibration.goodStd * Math.log(normalized / (1 - normalized));
}

export interface Judgement {
  raw: number;
  normalized: number;
  threshold: number;
  verdict: Verdict;
}

/** Verdict and normalised score for one raw score; `threshold` overrides the calibrated one (run-time setting). */
export function judge(raw: number, calibration: Pick<Calibration, 'threshold' | 'goodStd'>, threshold = calibration.threshold): Judgement {
  return {
    raw,
    normalized: normalizeScore(raw, { threshold, goodStd: calibration.goodStd }),
    threshold,
    verdict: verdictFor(raw, threshold),
  };
}
