/**
 * `ast-agent eval`: runs a bundle's fused detector over a dataset's test split and writes the report
 * folder (metrics.json, ROC curve, score histogram, overlays of the worst cases).
 */
import type { Logger } from 'pino';
import type { RuntimeOptions } from '../config/runtime-schema.js';
import { readBundle } from '../bundle/bundle-store.js';
import { Detector } from '../runtime/detector.js';
import { depthInputsFor } from '../runtime/depth-inputs.js';
import { tensor } from '../onnx/tensor.js';
import { decodeDepth, decodeMask, decodeRgb, loadDataset, requireSplit } from './datasets/index.js';
import { writeReport, type EvaluationMetrics, type ReportSample } from './evaluation/report.js';

export interface EvaluateOptions {
  bundle: string;
  data: string;
  className?: string;
  report: string;
  runtime?: Partial<RuntimeOptions>;
  batch?: number;
  worstCount?: number;
  /** Threshold to judge with instead of the bundle's calibrated one. */
  threshold?: number;
}

export async function evaluate(o: EvaluateOptions, logger: Logger): Promise<EvaluationMetrics> {
  const bundle = await readBundle(o.bundle);
  const m = bundle.manifest;
  const dataset = await loadDataset(o.data, { ...(o.className ? { className: o.className } : {}) });
  requireSplit(dataset, 'test');
  const threshold = o.threshold ?? m.calibration?.threshold;
  if (threshold === undefined) throw new Error(`bundle ${o.bundle} has no calibration; pass --threshold to evaluate it`);
  const detector = await Detector.load(bundle, 'detector', o.runtime ?? {}, logger);
  const size = { width: m.input.width, height: m.input.height };
  const frame = size.width * size.height * 3;
  const batch = o.batch ?? 8;
  const samples: ReportSample[] = [];
  const started = Date.now();
  try {
    for (let start = 0; start < dataset.test.length; start += batch) {
      const chunk = dataset.test.slice(start, start + batch);
      const rgbs = m.model.featureChannels > 0 ? await Promise.all(chunk.map((s) => decodeRgb(s.image!, size))) : [];
      const frames = m.model.featureChannels > 0 ? new Uint8Array(chunk.length * frame) : null;
      rgbs.forEach((rgb, i) => frames!.set(rgb, i * frame));
      const depth = m.model.depthChannels > 0 ? depthInputsFor(m, await Promise.all(chunk.map((s) => decodeDepth(s.depth!)))) : undefined;
      const r = await detector.inspect(frames ? tensor('uint8', [chunk.length, size.height, size.width, 3], frames) : null, depth);
      const plane = size.width * size.height;
      for (let i = 0; i < chunk.length; i++) {
        const s = chunk[i]!;
        const mapData = r.mapFull!.slice(i * plane, (i + 1) * plane);
        samples.push({
          id: s.id,
          defectType: s.defectType,
          label: s.label === 'good' ? 0 : 1,
          scoreMax: r.scoreMax[i]!,
          scoreMean: r.scoreMean[i]!,
          ...(rgbs[i] ? { image: { rgb: rgbs[i]!, width: size.width, height: size.height } } : {}),
          map: { data: mapData, width: size.width, height: size.height },
          ...(s.mask ? { mask: () => decodeMask(s.mask!, size) } : {}),
        });
      }
      logger.debug({ done: samples.length, of: dataset.test.length }, 'evaluating');
    }
  } finally {
    await detector.release();
  }
  const seconds = (Date.now() - started) / 1000;
  logger.info({ images: samples.length, seconds, imagesPerSecond: +(samples.length / seconds).toFixed(2) }, 'evaluated test split');
  return writeReport(o.report, {
    samples,
    threshold,
    scoreKind: m.model.scoring.aggregation,
    worstCount: o.worstCount ?? 4,
    ...(m.calibration ? { calibration: m.calibration } : {}),
    title: `${dataset.name} · ${m.id} ${m.version}`,
  });
}
