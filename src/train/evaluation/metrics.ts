/**
 * Evaluation maths: ROC/AUROC (image and pixel level), per-defect-type breakdown and the metrics of one
 * decision threshold. Pure functions over typed arrays; nothing here touches the disk.
 *
 * Conventions, shared with deployment (src/model/verdict.ts):
 * - label 1 = defective = "positive"; label 0 = good;
 * - a sample is rejected (predicted positive) when its score is AT OR ABOVE the threshold, and a NaN score
 *   is always a reject (`verdictFor`), so threshold metrics count exactly what the line would do;
 * - AUROC is exact: the Mann–Whitney U statistic with ties counted one half (equivalently, average ranks),
 *   i.e. the probability that a random defect scores above a random good, ties counting ½.
 */
import { verdictFor } from '../../model/verdict.js';

export class EvaluationError extends Error {
  constructor(
    message: string,
    /** The input at fault (e.g. `scores[17]`, `labels`), when there is one. */
    readonly field?: string,
  ) {
    super(message);
    this.name = 'EvaluationError';
  }
}

export type Label = 0 | 1;

export interface RocCurve {
  /** False-positive rate (goods rejected / goods) per point, from 0 to 1, non-decreasing. */
  fpr: number[];
  /** True-positive rate (defects rejected / defects) per point, from 0 to 1, non-decreasing. */
  tpr: number[];
  /**
   * The threshold of each point (reject when score ≥ threshold). The first point is +Infinity (nothing
   * rejected, (0, 0)); then every distinct score in decreasing order, the last being the lowest score (1, 1).
   */
  thresholds: number[];
}

// ---------------------------------------------------------------------------------------------------
// Input checks

function checkLengths(scores: ArrayLike<number>, labels: ArrayLike<number>): void {
  if (scores.length !== labels.length) {
    throw new EvaluationError(`scores and labels differ in length (${scores.length} vs ${labels.length})`, 'labels');
  }
}

/**
 * Splits scores into defect (positive) and good (negative) arrays. Ranking needs a total order, so a NaN
 * score is refused here (naming the sample) instead of being silently ranked somewhere; threshold metrics,
 * which only need a verdict, accept NaN as a reject like the deployed agent does.
 */
function splitByLabel(scores: ArrayLike<number>, labels: ArrayLike<number>): { pos: Float64Array; neg: Float64Array } {
  checkLengths(scores, labels);
  let nPos = 0;
  for (let i = 0; i < labels.length; i++) {
    const l = labels[i];
    if (l === 1) nPos++;
    else if (l !== 0) throw new EvaluationError(`labels[${i}] is ${l}; labels must be 0 (good) or 1 (defective)`, `labels[${i}]`);
    if (Number.isNaN(scores[i])) throw new EvaluationError(`scores[${i}] is NaN; a ranking metric needs comparable scores`, `scores[${i}]`);
  }
  const pos = new Float64Array(nPos);
  const neg = new Float64Array(labels.length - nPos);
  let p = 0;
  let n = 0;
  for (let i = 0; i < labels.length; i++) {
    if (labels[i] === 1) pos[p++] = scores[i]!;
    else neg[n++] = scores[i]!;
  }
  return { pos, neg };
}

function requireBothClasses(nPos: number, nNeg: number, what: string): void {
  if (nPos === 0 || nNeg === 0) {
    throw new EvaluationError(
      `${what} needs both classes: ${nNeg} good and ${nPos} defective ${what.startsWith('pixel') ? 'pixels' : 'samples'}`,
      'labels',
    );
  }
}

// ---------------------------------------------------------------------------------------------------
// Exact AUROC from two sorted arrays

type Sorted = Float64Array | Float32Array;

/**
 * Mann–Whitney U over ascending-sorted positive and negative scores, normalised to [0, 1]:
 * Σ over positives of (#negatives strictly below + ½ #negatives equal) / (P·N).
 * A merge walk, O(P + N) after sorting, so no index array or pair list is needed — this is what lets the
 * pixel metric run on two Float32Arrays of 13 M values. Counts stay integers or halves far below 2^53,
 * so the sum is exact in a double.
 */
export function aurocOfSorted(pos: Sorted, neg: Sorted): number {
  requireBothClasses(pos.length, neg.length, 'AUROC');
  let u = 0;
  let below = 0; // negatives strictly below the current positive value
  let i = 0;
  while (i < pos.length) {
    const v = pos[i]!;
    while (below < neg.length && neg[below]! < v) below++;
    let equalEnd = below;
    while (equalEnd < neg.length && neg[equalEnd]! === v) equalEnd++;
    let groupEnd = i + 1;
    while (groupEnd < pos.length && pos[groupEnd]! === v) groupEnd++;
    u += (groupEnd - i) * (below + (equalEnd - below) / 2);
    i = groupEnd;
  }
  return u / (pos.length * neg.length);
}

/** Exact image-level AUROC (ties = ½, i.e. average ranks). Throws EvaluationError without both classes. */
export function auroc(scores: ArrayLike<number>, labels: ArrayLike<Label>): number {
  const { pos, neg } = splitByLabel(scores, labels);
  requireBothClasses(pos.length, neg.length, 'AUROC');
  return aurocOfSorted(pos.sort(), neg.sort());
}

/**
 * ROC points from ascending-sorted positive and negative scores, walking thresholds from the top.
 * With `maxPoints`, points are dropped while the curve has moved less than 2/maxPoints (in fpr + tpr)
 * since the last kept one, so at most maxPoints + 2 remain; the first and last points are always kept. That bounds a plotted pixel curve
 * to a few hundred points without visibly changing it (the AUROC itself is never computed from it).
 */
export function rocOfSorted(pos: Sorted, neg: Sorted, maxPoints = Infinity): RocCurve {
  requireBothClasses(pos.length, neg.length, 'ROC curve');
  const P = pos.length;
  const N = neg.length;
  const fpr = [0];
  const tpr = [0];
  const thresholds = [Infinity];
  // The curve's L1 path length is at most 2 (fpr and tpr each rise 0 → 1), so this keeps ≤ maxPoints + 2 points.
  const step = Number.isFinite(maxPoints) ? 2 / Math.max(1, maxPoints) : 0;
  let i = P - 1; // next positive to include, walking down
  let j = N - 1;
  let tp = 0;
  let fp = 0;
  let lastF = 0;
  let lastT = 0;
  while (i >= 0 || j >= 0) {
    const v = Math.max(i >= 0 ? pos[i]! : -Infinity, j >= 0 ? neg[j]! : -Infinity);
    while (i >= 0 && pos[i]! === v) {
      tp++;
      i--;
    }
    while (j >= 0 && neg[j]! === v) {
      fp++;
      j--;
    }
    const f = fp / N;
    const t = tp / P;
    const last = i < 0 && j < 0;
    if (last || Math.abs(f - lastF) + Math.abs(t - lastT) >= step) {
      fpr.push(f);
      tpr.push(t);
      thresholds.push(v);
      lastF = f;
      lastT = t;
    }
  }
  return { fpr, tpr, thresholds };
}

/** ROC curve at every distinct score (reject when score ≥ threshold), from (0, 0) at +∞ to (1, 1). */
export function rocCurve(scores: ArrayLike<number>, labels: ArrayLike<Label>, maxPoints = Infinity): RocCurve {
  const { pos, neg } = splitByLabel(scores, labels);
  return rocOfSorted(pos.sort(), neg.sort(), maxPoints);
}

// ---------------------------------------------------------------------------------------------------
// Pixel AUROC

export interface PixelAurocResult {
  auroc: number;
  /** Pixels that entered the metric, and how many of them the masks mark defective. */
  pixels: number;
  defectPixels: number;
  method: 'exact' | 'binned';
  /** |reported − exact| ≤ errorBound; 0 for the exact method. */
  errorBound: number;
}

function checkMapAndMask(map: ArrayLike<number>, mask: ArrayLike<number>): void {
  if (map.length !== mask.length) {
    throw new EvaluationError(`an anomaly map has ${map.length} pixels but its mask ${mask.length}; resize the map to the mask first`, 'mask');
  }
}

/**
 * Exact pixel AUROC over many (map, mask) pairs, fed one image at a time so the maps themselves need not
 * stay in memory. Only the pixel values are kept, as float32 (the precision the maps are computed in, so
 * nothing is lost): 4 bytes per pixel, e.g. 52 MB for 200 × 256², sorted in place by the engine's native
 * typed-array sort (about a second for 13 M values). Mask pixels are defective when non-zero (MVTec
 * masks are 0/255).
 */
export class PixelAurocAccumulator {
  private pos: Float32Array;
  private neg: Float32Array;
  private nPos = 0;
  private nNeg = 0;
  private sorted = false;

  /** `capacity`: expected number of pixels, to avoid regrowing (the buffers double when full). */
  constructor(capacity = 1 << 16) {
    this.pos = new Float32Array(Math.max(16, capacity >> 4));
    this.neg = new Float32Array(Math.max(16, capacity));
  }

  get pixels(): number {
    return this.nPos + this.nNeg;
  }

  get defectPixels(): number {
    return this.nPos;
  }

  /** Adds one image's map and its mask of the same size (row-major, same pixel order). */
  add(map: ArrayLike<number>, mask: ArrayLike<number>): void {
    checkMapAndMask(map, mask);
    let k = 0;
    for (let i = 0; i < mask.length; i++) if (mask[i] !== 0) k++;
    this.reserve(k, map.length - k);
    const pos = this.pos;
    const neg = this.neg;
    let p = this.nPos;
    let n = this.nNeg;
    for (let i = 0; i < map.length; i++) {
      const v = map[i]!;
      if (Number.isNaN(v)) throw new EvaluationError(`anomaly map pixel ${i} is NaN`, `map[${i}]`);
      if (mask[i] !== 0) pos[p++] = v;
      else neg[n++] = v;
    }
    this.nPos = p;
    this.nNeg = n;
    this.sorted = false;
  }

  private reserve(morePos: number, moreNeg: number): void {
    const grow = (a: Float32Array, used: number, needed: number): Float32Array => {
      if (needed <= a.length) return a;
      let size = a.length;
      while (size < needed) size *= 2;
      const b = new Float32Array(size);
      b.set(a.subarray(0, used));
      return b;
    };
    this.pos = grow(this.pos, this.nPos, this.nPos + morePos);
    this.neg = grow(this.neg, this.nNeg, this.nNeg + moreNeg);
  }

  private sortedViews(): { pos: Float32Array; neg: Float32Array } {
    const pos = this.pos.subarray(0, this.nPos);
    const neg = this.neg.subarray(0, this.nNeg);
    if (!this.sorted) {
      pos.sort();
      neg.sort();
      this.sorted = true;
    }
    return { pos, neg };
  }

  result(): PixelAurocResult {
    requireBothClasses(this.nPos, this.nNeg, 'pixel AUROC');
    const { pos, neg } = this.sortedViews();
    return { auroc: aurocOfSorted(pos, neg), pixels: this.pixels, defectPixels: this.nPos, method: 'exact', errorBound: 0 };
  }

  /** Pixel ROC curve for plotting, thinned to about `maxPoints` points (see rocOfSorted). */
  curve(maxPoints = 512): RocCurve {
    requireBothClasses(this.nPos, this.nNeg, 'pixel ROC curve');
    const { pos, neg } = this.sortedViews();
    return rocOfSorted(pos, neg, maxPoints);
  }
}

/**
 * Constant-memory pixel AUROC for when 4 bytes per pixel is too much (e.g. the `paper` preset's 768² maps):
 * values are counted in `bins` equal bins over [min, max] (values outside are clamped into the end bins).
 * Pairs in different bins are ordered correctly by any monotone binning; only a defect and a good pixel in
 * the SAME bin are unresolved, and the estimate counts each such pair ½ where the truth is 0, ½ or 1. So
 *   |estimate − exact| ≤ ½ · Σ_b defects_b · goods_b / (P · N),
 * which `result()` reports as `errorBound` — computed from the data, not assumed.
 */
export class BinnedPixelAuroc {
  private readonly pos: Float64Array;
  private readonly neg: Float64Array;
  private readonly scale: number;

  constructor(
    readonly min: number,
    readonly max: number,
    readonly bins = 1 << 16,
  ) {
    if (!(Number.isFinite(min) && Number.isFinite(max) && max > min)) throw new EvaluationError(`binned pixel AUROC needs a finite range min < max, got [${min}, ${max}]`, 'range');
    if (!Number.isInteger(bins) || bins < 2) throw new EvaluationError(`binned pixel AUROC needs an integer number of bins ≥ 2, got ${bins}`, 'bins');
    this.pos = new Float64Array(bins);
    this.neg = new Float64Array(bins);
    this.scale = bins / (max - min);
  }

  get pixels(): number {
    let n = 0;
    for (let b = 0; b < this.bins; b++) n += this.pos[b]! + this.neg[b]!;
    return n;
  }

  get defectPixels(): number {
    let n = 0;
    for (let b = 0; b < this.bins; b++) n += this.pos[b]!;
    return n;
  }

  add(map: ArrayLike<number>, mask: ArrayLike<number>): void {
    checkMapAndMask(map, mask);
    const last = this.bins - 1;
    for (let i = 0; i < map.length; i++) {
      const v = map[i]!;
      if (Number.isNaN(v)) throw new EvaluationError(`anomaly map pixel ${i} is NaN`, `map[${i}]`);
      const b = Math.min(last, Math.max(0, Math.floor((v - this.min) * this.scale)));
      if (mask[i] !== 0) this.pos[b]!++;
      else this.neg[b]!++;
    }
  }

  result(): PixelAurocResult {
    let P = 0;
    let N = 0;
    for (let b = 0; b < this.bins; b++) {
      P += this.pos[b]!;
      N += this.neg[b]!;
    }
    requireBothClasses(P, N, 'pixel AUROC');
    let u = 0;
    let within = 0;
    let below = 0;
    for (let b = 0; b < this.bins; b++) {
      u += this.pos[b]! * (below + this.neg[b]! / 2);
      within += this.pos[b]! * this.neg[b]!;
      below += this.neg[b]!;
    }
    return { auroc: u / (P * N), pixels: P + N, defectPixels: P, method: 'binned', errorBound: within / 2 / (P * N) };
  }
}

/** Exact pixel AUROC of in-memory maps and masks (each map the size of its mask). */
export function pixelAuroc(maps: Iterable<ArrayLike<number>>, masks: Iterable<ArrayLike<number>>): PixelAurocResult {
  const acc = new PixelAurocAccumulator();
  const it = masks[Symbol.iterator]();
  let index = 0;
  for (const map of maps) {
    const next = it.next();
    if (next.done) throw new EvaluationError(`map ${index} has no mask (fewer masks than maps)`, 'masks');
    acc.add(map, next.value);
    index++;
  }
  if (!it.next().done) throw new EvaluationError(`more masks than maps (${index} maps)`, 'masks');
  return acc.result();
}

// ---------------------------------------------------------------------------------------------------
// One threshold

export interface ThresholdMetrics {
  threshold: number;
  /** Defects rejected (caught). */
  tp: number;
  /** Goods rejected (false rejects). */
  fp: number;
  /** Goods passed. */
  tn: number;
  /** Defects passed (escapes). */
  fn: number;
  /** fp / goods; null without goods. */
  falseRejectRate: number | null;
  /** fn / defects; null without defects. */
  escapeRate: number | null;
  /** tp / rejects; null when nothing is rejected. */
  precision: number | null;
  /** tp / defects = 1 − escapeRate; null without defects. */
  recall: number | null;
  /** 2tp / (2tp + fp + fn) (harmonic mean of precision and recall, 0 when either is 0); null when tp + fp + fn = 0. */
  f1: number | null;
  /** (tp + tn) / samples; null without samples. */
  accuracy: number | null;
}

const ratio = (a: number, b: number): number | null => (b > 0 ? a / b : null);

/** Confusion counts and rates at `threshold`, with the deployed verdict rule (reject at or above; NaN rejects). */
export function thresholdMetrics(scores: ArrayLike<number>, labels: ArrayLike<Label>, threshold: number): ThresholdMetrics {
  checkLengths(scores, labels);
  if (Number.isNaN(threshold)) throw new EvaluationError('threshold is NaN', 'threshold');
  let tp = 0;
  let fp = 0;
  let tn = 0;
  let fn = 0;
  for (let i = 0; i < scores.length; i++) {
    const reject = verdictFor(scores[i]!, threshold) === 'reject';
    const l = labels[i];
    if (l === 1) reject ? tp++ : fn++;
    else if (l === 0) reject ? fp++ : tn++;
    else throw new EvaluationError(`labels[${i}] is ${l}; labels must be 0 (good) or 1 (defective)`, `labels[${i}]`);
  }
  return {
    threshold,
    tp,
    fp,
    tn,
    fn,
    falseRejectRate: ratio(fp, fp + tn),
    escapeRate: ratio(fn, tp + fn),
    precision: ratio(tp, tp + fp),
    recall: ratio(tp, tp + fn),
    f1: ratio(2 * tp, 2 * tp + fp + fn),
    accuracy: ratio(tp + tn, scores.length),
  };
}

// ---------------------------------------------------------------------------------------------------
// Per defect type

export interface ScoredSample {
  /** 'good' (or anything) for label 0; the defect type (MVTec folder name) for label 1. */
  defectType: string;
  label: Label;
  score: number;
}

export interface DefectTypeMetrics {
  defectType: string;
  count: number;
  /** AUROC of this defect type against ALL goods; null when there are no goods. */
  auroc: number | null;
  meanScore: number;
  /** Defects of this type passed at the threshold (only when a threshold is given). */
  escapes?: number;
  escapeRate?: number;
}

/**
 * Each defect type scored against all goods (the MVTec convention), sorted by type name. Goods are the
 * samples with label 0 whatever their `defectType`.
 */
export function perDefectType(samples: readonly ScoredSample[], threshold?: number): DefectTypeMetrics[] {
  const goods: number[] = [];
  const byType = new Map<string, number[]>();
  samples.forEach((s, i) => {
    if (s.label === 0) goods.push(s.score);
    else if (s.label === 1) {
      const list = byType.get(s.defectType) ?? [];
      list.push(s.score);
      byType.set(s.defectType, list);
    } else throw new EvaluationError(`samples[${i}].label is ${String(s.label)}; labels must be 0 or 1`, `samples[${i}].label`);
  });
  const sortedGoods = goods.length > 0 ? splitByLabel(goods, new Array<Label>(goods.length).fill(0)).neg.sort() : null;
  return [...byType.keys()].sort().map((defectType) => {
    const scores = byType.get(defectType)!;
    const pos = splitByLabel(scores, new Array<Label>(scores.length).fill(1)).pos.sort();
    const row: DefectTypeMetrics = {
      defectType,
      count: scores.length,
      auroc: sortedGoods ? aurocOfSorted(pos, sortedGoods) : null,
      meanScore: scores.reduce((a, b) => a + b, 0) / scores.length,
    };
    if (threshold !== undefined) {
      const escapes = scores.filter((s) => verdictFor(s, threshold) === 'pass').length;
      row.escapes = escapes;
      row.escapeRate = escapes / scores.length;
    }
    return row;
  });
}
