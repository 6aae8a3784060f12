/**
 * The evaluation report folder:
 *
 *   metrics.json          image AUROC (max and mean scores), pixel AUROC when masks exist, per-defect-type
 *                         breakdown, confusion counts and rates at the threshold, the worst cases
 *   roc.png               ROC curves (max, mean, pixel) with AUROC in the legend and the operating point
 *   histogram.png         good vs defective scores with the threshold
 *   overlays/*.png        the worst cases: highest-scoring goods (false-reject candidates), lowest-scoring
 *                         defects (escape candidates) and highest-scoring defects
 *
 * The maths lives in metrics.ts, the drawing in charts.ts and overlay.ts; this file only gathers, renders
 * and writes. The folder is built in a staging sibling and renamed into place with metrics.json written
 * last, so a crash never leaves a half-written report that looks complete.
 *
 * Memory: a sample's image, map and mask may be given as functions that load them on demand. Each map is
 * then loaded once for the pixel metric (4 bytes per pixel are kept, see PixelAurocAccumulator) and
 * dropped, except the few worst cases' maps, which are kept for their overlays.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { replaceFolderAtomically } from '../../storage/atomic-folder.js';
import sharp from 'sharp';
import { z } from 'zod';
import { CalibrationSchema, type Calibration } from '../../config/bundle-manifest.js';
import { judge, verdictFor } from '../../model/verdict.js';
import { histogramSvg, rocChartSvg, type RocSeries } from './charts.js';
import {
  BinnedPixelAuroc,
  EvaluationError,
  PixelAurocAccumulator,
  auroc,
  perDefectType,
  rocCurve,
  thresholdMetrics,
  type Label,
  type PixelAurocResult,
  type RocCurve,
} from './metrics.js';
import { renderOverlayPng, type RgbImage, type ScoreMap } from './overlay.js';

export type { RgbImage, ScoreMap } from './overlay.js';

/** A value, or a function that loads it when the report needs it. */
export type Lazy<T> = T | (() => T | Promise<T>);

export interface ReportSample {
  id: string;
  /** 'good' for goods, else the defect type (MVTec folder name). */
  defectType: string;
  label: Label;
  scoreMax: number;
  scoreMean: number;
  image?: Lazy<RgbImage>;
  /** The anomaly map (any size; shown bilinearly resized onto the image). */
  map?: Lazy<ScoreMap>;
  /**
   * Ground truth at the map's size, non-zero = defect. A good sample with a map and no mask counts as
   * all-good pixels (MVTec ships no masks for goods); a defect without a mask is left out of the pixel metric.
   */
  mask?: Lazy<ArrayLike<number>>;
}

export interface ReportInput {
  samples: readonly ReportSample[];
  /** Raw decision threshold on the chosen score (reject at or above). */
  threshold: number;
  scoreKind: 'max' | 'mean';
  /** Overlays per list (false-reject candidates, escape candidates); default 4. */
  worstCount?: number;
  /** Overlays of the highest-scoring defects; default worstCount. */
  topDefectCount?: number;
  /** When given, recorded and used for the normalised scores of the worst cases. */
  calibration?: Calibration;
  /** Shown in chart titles, e.g. "grass · edge". */
  title?: string;
  /** 'exact' (default) or constant-memory binning with a reported error bound (see BinnedPixelAuroc). */
  pixelMethod?: 'exact' | { method: 'binned'; min: number; max: number; bins?: number };
  /** Clock for createdAt (tests). */
  now?: Date;
}

// ---------------------------------------------------------------------------------------------------
// metrics.json

const Rate = z.number().min(0).max(1);
const Count = z.int().min(0);

export const ThresholdMetricsSchema = z.object({
  threshold: z.number(),
  tp: Count,
  fp: Count,
  tn: Count,
  fn: Count,
  falseRejectRate: Rate.nullable(),
  escapeRate: Rate.nullable(),
  precision: Rate.nullable(),
  recall: Rate.nullable(),
  f1: Rate.nullable(),
  accuracy: Rate.nullable(),
});

const WorstCaseSchema = z.object({
  rank: z.int().min(1),
  id: z.string(),
  defectType: z.string(),
  label: z.union([z.literal(0), z.literal(1)]),
  /** The score the threshold applies to (scoreKind). */
  score: z.number(),
  scoreMax: z.number(),
  scoreMean: z.number(),
  verdict: z.enum(['pass', 'reject']),
  normalized: z.number().optional(),
  /** Overlay PNG relative to the report folder; null when the sample has no anomaly map. */
  file: z.string().nullable(),
});

export const EvaluationMetricsSchema = z.object({
  format: z.literal('ast-edge-evaluation'),
  formatVersion: z.literal(1),
  createdAt: z.iso.datetime(),
  title: z.string().optional(),
  scoreKind: z.enum(['max', 'mean']),
  threshold: z.number(),
  calibration: CalibrationSchema.nullable(),
  counts: z.object({
    samples: Count,
    good: Count,
    defective: Count,
    /** Defective samples per defect type. */
    defectTypes: z.record(z.string(), Count),
    withMap: Count,
    withMask: Count,
  }),
  /** Null when one class is missing (e.g. a folder of goods only). */
  image: z.object({ aurocMax: Rate.nullable(), aurocMean: Rate.nullable() }),
  pixel: z
    .object({
      auroc: Rate,
      method: z.enum(['exact', 'binned']),
      errorBound: z.number().min(0),
      pixels: Count,
      defectPixels: Count,
      images: Count,
      skippedDefectsWithoutMask: Count,
    })
    .nullable(),
  perDefectType: z.array(
    z.object({
      defectType: z.string(),
      count: Count,
      /** This type against all goods; null without goods. */
      aurocMax: Rate.nullable(),
      aurocMean: Rate.nullable(),
      meanScoreMax: z.number(),
      meanScoreMean: z.number(),
      /** At the threshold, on scoreKind. */
      escapes: Count,
      escapeRate: Rate,
    }),
  ),
  atThreshold: ThresholdMetricsSchema,
  worst: z.object({
    falseRejectCandidates: z.array(WorstCaseSchema),
    escapeCandidates: z.array(WorstCaseSchema),
    topDefects: z.array(WorstCaseSchema),
  }),
  files: z.object({ roc: z.string().nullable(), histogram: z.string(), overlays: z.array(z.string()) }),
});
export type EvaluationMetrics = z.infer<typeof EvaluationMetricsSchema>;
export type WorstCase = z.infer<typeof WorstCaseSchema>;

/** The headline numbers as the flat name → number record a bundle manifest's `metrics` holds. */
export function manifestMetrics(m: EvaluationMetrics): Record<string, number> {
  const out: Record<string, number> = {};
  const put = (k: string, v: number | null | undefined): void => {
    if (typeof v === 'number' && Number.isFinite(v)) out[k] = v;
  };
  put('imageAurocMax', m.image.aurocMax);
  put('imageAurocMean', m.image.aurocMean);
  put('pixelAuroc', m.pixel?.auroc);
  put('falseRejectRate', m.atThreshold.falseRejectRate);
  put('escapeRate', m.atThreshold.escapeRate);
  put('f1', m.atThreshold.f1);
  put('evalSamples', m.counts.samples);
  return out;
}

// ---------------------------------------------------------------------------------------------------

async function load<T>(v: Lazy<T> | undefined): Promise<T | undefined> {
  return typeof v === 'function' ? await (v as () => T | Promise<T>)() : v;
}

/** A file-name-safe form of a sample id ("scratch/003.png" → "scratch_003"). */
const safeName = (id: string): string =>
  id
    .replace(/\.(png|jpe?g|bmp|tiff?|webp)$/i, '')
    .replace(/[^A-Za-z0-9._-]+/g, '_')
    .replace(/^[._]+/, '')
    .slice(0, 80) || 'sample';

function checkInput(input: ReportInput): void {
  if (input.samples.length === 0) throw new EvaluationError('the report needs at least one sample', 'samples');
  if (!Number.isFinite(input.threshold)) throw new EvaluationError(`threshold must be a finite number, got ${input.threshold}`, 'threshold');
  if (input.scoreKind !== 'max' && input.scoreKind !== 'mean') throw new EvaluationError(`scoreKind must be 'max' or 'mean', got ${String(input.scoreKind)}`, 'scoreKind');
  for (const n of ['worstCount', 'topDefectCount'] as const) {
    const v = input[n];
    if (v !== undefined && !(Number.isInteger(v) && v >= 0)) throw new EvaluationError(`${n} must be a non-negative integer, got ${v}`, n);
  }
  input.samples.forEach((s, i) => {
    if (s.label !== 0 && s.label !== 1) throw new EvaluationError(`samples[${i}] (${s.id}): label must be 0 or 1, got ${String(s.label)}`, `samples[${i}].label`);
    // A NaN score means a broken model; it has no rank and JSON cannot hold it, so it stops the report
    // with the sample named rather than being dropped or ranked arbitrarily.
    for (const k of ['scoreMax', 'scoreMean'] as const) {
      if (!Number.isFinite(s[k])) throw new EvaluationError(`samples[${i}] (${s.id}): ${k} is ${s[k]}; scores must be finite`, `samples[${i}].${k}`);
    }
  });
}

/** Computes the metrics, renders the charts and overlays, and writes the report folder `dir`. */
export async function writeReport(dir: string, input: ReportInput): Promise<EvaluationMetrics> {
  checkInput(input);
  const { samples, threshold, scoreKind } = input;
  const worstCount = input.worstCount ?? 4;
  const topDefectCount = input.topDefectCount ?? worstCount;
  const score = (s: ReportSample): number => (scoreKind === 'max' ? s.scoreMax : s.scoreMean);
  const labels = samples.map((s) => s.label);
  const goods = samples.filter((s) => s.label === 0);
  const defects = samples.filter((s) => s.label === 1);
  const bothClasses = goods.length > 0 && defects.length > 0;

  // Image level.
  const maxScores = samples.map((s) => s.scoreMax);
  const meanScores = samples.map((s) => s.scoreMean);
  const aurocMax = bothClasses ? auroc(maxScores, labels) : null;
  const aurocMean = bothClasses ? auroc(meanScores, labels) : null;
  const atThreshold = thresholdMetrics(samples.map(score), labels, threshold);

  // Worst cases are known from the scores alone, so their maps can be kept during the single pixel pass.
  const byScore = (dir: 1 | -1) => (a: ReportSample, b: ReportSample) => dir * (score(a) - score(b));
  const lists = {
    falseRejectCandidates: [...goods].sort(byScore(-1)).slice(0, worstCount),
    escapeCandidates: [...defects].sort(byScore(1)).slice(0, worstCount),
    topDefects: [...defects].sort(byScore(-1)).slice(0, topDefectCount),
  };
  const wanted = new Set<ReportSample>([...lists.falseRejectCandidates, ...lists.escapeCandidates, ...lists.topDefects]);
  const kept = new Map<ReportSample, { map: ScoreMap; mask?: ArrayLike<number> }>();

  // Pixel level, one map at a time.
  const anyMask = samples.some((s) => s.mask !== undefined);
  const pixelAcc =
    input.pixelMethod && input.pixelMethod !== 'exact'
      ? new BinnedPixelAuroc(input.pixelMethod.min, input.pixelMethod.max, input.pixelMethod.bins)
      : new PixelAurocAccumulator();
  let pixelImages = 0;
  let skippedDefects = 0;
  let withMap = 0;
  let withMask = 0;
  const zeros = new Map<number, Uint8Array>();
  for (const [i, s] of samples.entries()) {
    if (s.mask !== undefined) withMask++;
    if (s.map === undefined) continue;
    withMap++;
    if (!anyMask && !wanted.has(s)) continue;
    const map = await load(s.map);
    if (!map) continue;
    if (map.data.length !== map.width * map.height) {
      throw new EvaluationError(`samples[${i}] (${s.id}): map has ${map.data.length} values, expected ${map.width}×${map.height}`, `samples[${i}].map`);
    }
    const mask = await load(s.mask);
    if (mask && mask.length !== map.data.length) {
      throw new EvaluationError(`samples[${i}] (${s.id}): mask has ${mask.length} pixels, the map ${map.width}×${map.height}; masks must have the map's size`, `samples[${i}].mask`);
    }
    if (anyMask) {
      if (mask) {
        pixelAcc.add(map.data, mask);
        pixelImages++;
      } else if (s.label === 0) {
        if (!zeros.has(map.data.length)) zeros.set(map.data.length, new Uint8Array(map.data.length));
        pixelAcc.add(map.data, zeros.get(map.data.length)!);
        pixelImages++;
      } else skippedDefects++;
    }
    if (wanted.has(s)) kept.set(s, mask ? { map, mask } : { map });
  }
  let pixel: EvaluationMetrics['pixel'] = null;
  let pixelCurve: RocCurve | null = null;
  if (anyMask && pixelAcc.defectPixels > 0 && pixelAcc.pixels > pixelAcc.defectPixels) {
    const r: PixelAurocResult = pixelAcc.result();
    pixel = { ...r, images: pixelImages, skippedDefectsWithoutMask: skippedDefects };
    if (pixelAcc instanceof PixelAurocAccumulator) pixelCurve = pixelAcc.curve(400);
  }

  // Per defect type: AUROC of both scores, escapes on the chosen one.
  const rows = (pick: (s: ReportSample) => number, t?: number) =>
    perDefectType(samples.map((s) => ({ defectType: s.defectType, label: s.label, score: pick(s) })), t);
  const byMax = rows((s) => s.scoreMax, scoreKind === 'max' ? threshold : undefined);
  const byMean = rows((s) => s.scoreMean, scoreKind === 'mean' ? threshold : undefined);
  const perType = byMax.map((m, k) => {
    const mean = byMean[k]!;
    const chosen = scoreKind === 'max' ? m : mean;
    return {
      defectType: m.defectType,
      count: m.count,
      aurocMax: m.auroc,
      aurocMean: mean.auroc,
      meanScoreMax: m.meanScore,
      meanScoreMean: mean.meanScore,
      escapes: chosen.escapes!,
      escapeRate: chosen.escapeRate!,
    };
  });

  // Files, rendered into memory first (small), then written in one staged folder.
  const files = new Map<string, Uint8Array | string>();
  const title = input.title ? ` — ${input.title}` : '';
  let rocFile: string | null = null;
  if (bothClasses) {
    const series: RocSeries[] = [
      { label: 'image, max score', curve: rocCurve(maxScores, labels), auroc: aurocMax! },
      { label: 'image, mean score', curve: rocCurve(meanScores, labels), auroc: aurocMean! },
    ];
    if (pixel && pixelCurve) series.push({ label: 'pixel', curve: pixelCurve, auroc: pixel.auroc, dashed: true });
    const svg = rocChartSvg({
      title: `ROC${title}`,
      series,
      points: [{ fpr: atThreshold.falseRejectRate ?? 0, tpr: atThreshold.recall ?? 0, label: `threshold (${scoreKind})` }],
    });
    rocFile = 'roc.png';
    files.set(rocFile, await sharp(Buffer.from(svg)).png().toBuffer());
  }
  const histogram = histogramSvg({
    title: `Image scores (${scoreKind})${title}`,
    xTitle: `raw image score (${scoreKind})`,
    good: goods.map(score),
    defective: defects.map(score),
    threshold,
  });
  files.set('histogram.png', await sharp(Buffer.from(histogram)).png().toBuffer());

  // Overlays share one colour range so a hot good and a cold defect can be compared at a glance.
  let lo = 0;
  let hi = -Infinity;
  for (const { map } of kept.values()) {
    for (const v of map.data) {
      if (!Number.isFinite(v)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  if (!(hi > lo)) hi = lo + 1;
  const roles = {
    falseRejectCandidates: { prefix: 'false-reject', name: 'false-reject candidate (highest-scoring good)' },
    escapeCandidates: { prefix: 'escape', name: 'escape candidate (lowest-scoring defect)' },
    topDefects: { prefix: 'top-defect', name: 'top defect (highest-scoring defect)' },
  } as const;
  const worst = {} as EvaluationMetrics['worst'];
  const overlayFiles: string[] = [];
  for (const listName of Object.keys(lists) as (keyof typeof lists)[]) {
    const role = roles[listName];
    const entries: WorstCase[] = [];
    for (const [k, s] of lists[listName].entries()) {
      const raw = score(s);
      const verdict = verdictFor(raw, threshold);
      const normalized = input.calibration ? judge(raw, input.calibration, threshold).normalized : undefined;
      let file: string | null = null;
      const visual = kept.get(s);
      if (visual) {
        file = `overlays/${role.prefix}-${String(k + 1).padStart(2, '0')}-${safeName(s.id)}.png`;
        const image = await load(s.image);
        const outcome =
          s.label === 0 ? (verdict === 'reject' ? 'FALSE REJECT' : 'pass (correct)') : verdict === 'pass' ? 'ESCAPE' : 'reject (correct)';
        const { png } = await renderOverlayPng({
          ...(image ? { image } : {}),
          map: visual.map,
          ...(visual.mask ? { mask: visual.mask } : {}),
          range: [lo, hi],
          caption: [
            `${role.name} #${k + 1}: ${s.id}`,
            `${s.label === 0 ? 'good' : `defect: ${s.defectType}`} · ${scoreKind} score ${fmt(raw)} · threshold ${fmt(threshold)}` +
              `${normalized !== undefined ? ` · normalised ${normalized.toFixed(3)}` : ''} → ${outcome}`,
          ],
          ...(scoreKind === 'max' ? { mark: { value: threshold, label: 'threshold' } } : {}),
        });
        files.set(file, png);
        overlayFiles.push(file);
      }
      entries.push({
        rank: k + 1,
        id: s.id,
        defectType: s.defectType,
        label: s.label,
        score: raw,
        scoreMax: s.scoreMax,
        scoreMean: s.scoreMean,
        verdict,
        ...(normalized !== undefined ? { normalized } : {}),
        file,
      });
    }
    worst[listName] = entries;
  }

  const defectTypes: Record<string, number> = {};
  for (const s of defects) defectTypes[s.defectType] = (defectTypes[s.defectType] ?? 0) + 1;
  const metrics = EvaluationMetricsSchema.parse({
    format: 'ast-edge-evaluation',
    formatVersion: 1,
    createdAt: (input.now ?? new Date()).toISOString(),
    ...(input.title ? { title: input.title } : {}),
    scoreKind,
    threshold,
    calibration: input.calibration ?? null,
    counts: { samples: samples.length, good: goods.length, defective: defects.length, defectTypes, withMap, withMask },
    image: { aurocMax, aurocMean },
    pixel,
    perDefectType: perType,
    atThreshold,
    worst,
    files: { roc: rocFile, histogram: 'histogram.png', overlays: overlayFiles },
  } satisfies EvaluationMetrics);
  await writeFolder(dir, files, JSON.stringify(metrics, null, 2) + '\n');
  return metrics;
}

const fmt = (v: number): string => (Number.isFinite(v) ? Number(v.toPrecision(4)).toString() : String(v));

/**
 * Writes the report folder atomically: staging sibling, metrics.json last, rename into place. An existing
 * folder is replaced only if it is empty or is itself a report (holds metrics.json), so pointing --report
 * at the wrong folder cannot delete someone's files.
 */
async function writeFolder(dir: string, files: Map<string, Uint8Array | string>, metricsJson: string): Promise<void> {
  const target = resolve(dir);
  if (existsSync(target)) {
    const entries = await readdir(target);
    if (entries.length > 0 && !entries.includes('metrics.json')) {
      throw new EvaluationError(`refusing to replace ${target}: it is not empty and holds no metrics.json (not a report folder)`, 'dir');
    }
  }
  await replaceFolderAtomically(
    target,
    async (staging) => {
      for (const [name, bytes] of files) {
        await mkdir(dirname(join(staging, name)), { recursive: true });
        await writeFile(join(staging, name), bytes);
      }
      await writeFile(join(staging, 'metrics.json'), metricsJson);
    },
    { mode: 0o755 }, // a report is meant to be read by others
  );
}
