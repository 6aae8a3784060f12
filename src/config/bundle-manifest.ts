/**
 * The bundle manifest: everything a device needs to run, trust and explain a model. It is the single
 * truth the detector graphs are built from, and it carries post-processing (calibration) with the model
 * so training and deployment give the same verdicts.
 */
import { z } from 'zod';
import { ModelParamsSchema, type ModelParams } from './model-schema.js';

export const BUNDLE_FORMAT = 'ast-edge-bundle';
export const BUNDLE_FORMAT_VERSION = 1;

const SEMVER = /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$/;
const RELATIVE_FILE = /^(?!\/)(?!.*\.\.)[A-Za-z0-9._/-]+$/;

export const FileEntrySchema = z.object({
  sha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex digits'),
  bytes: z.int().min(0),
});

export const InputSpecSchema = z.object({
  /** Frames enter the fused graph as uint8 RGB, NHWC, at exactly this size. */
  width: z.int().min(8),
  height: z.int().min(8),
  layout: z.literal('NHWC'),
  dtype: z.literal('uint8'),
  colorSpace: z.literal('RGB'),
  /** Applied inside the graph after scaling to [0, 1]: (x − mean) / std per channel. */
  mean: z.array(z.number()).length(3),
  std: z.array(z.number().positive()).length(3),
  /**
   * Mirrored context (pixels) added around each frame before the backbone and cropped off its features, so
   * border features are computed like interior ones instead of from the backbone's zero padding. A multiple
   * of the coarsest backbone stride; 0 = none.
   */
  contextPad: z.int().min(0).optional(),
});
export type InputSpec = z.infer<typeof InputSpecSchema>;

export const BackboneOutputSchema = z.object({
  name: z.string().min(1),
  layer: z.string().optional(),
  channels: z.int().min(1),
  stride: z.int().min(1),
});

export const BackboneSpecSchema = z.object({
  file: z.string().regex(RELATIVE_FILE, 'must be a relative path inside the bundle'),
  name: z.string().min(1),
  description: z.string(),
  inputName: z.string().min(1),
  /** Inputs the backbone expects in NCHW float32 (after the manifest's normalisation). */
  outputs: z.array(BackboneOutputSchema).min(1),
});
export type BackboneSpec = z.infer<typeof BackboneSpecSchema>;

export const CalibrationSchema = z.object({
  /** Raw image score at and above which a part is rejected. */
  threshold: z.number().nonnegative(),
  /** Statistics of held-out good scores; normalised = sigmoid((raw − threshold) / goodStd), so the threshold sits at 0.5. */
  goodMean: z.number(),
  goodStd: z.number().positive(),
  method: z.enum(['false-reject-rate', 'best-f1', 'manual']),
  targetFalseRejectRate: z.number().min(0).max(1).optional(),
  samples: z.int().min(0),
});
export type Calibration = z.infer<typeof CalibrationSchema>;

export const ProvenanceSchema = z.object({
  source: z.enum(['import-reference', 'train', 'fine-tune', 'synthetic']),
  tool: z.string(),
  createdAt: z.iso.datetime(),
  from: z.string().optional(),
  dataset: z.string().optional(),
  notes: z.string().optional(),
});

/**
 * Golden samples: a few held-out inputs with the scores the bundle's own detector graph gave them when it
 * was built. After a model swap the device scores them and compares, so a bundle that loads but computes
 * something else (wrong execution provider, broken graph, different preprocessing) is caught before it
 * judges parts. An input is what the detector graph takes: images for rgb and rgbd models, prepared depth
 * and mask for rgbd and depth models.
 */
export const GoldenSchema = z.object({
  /** Raw uint8 RGB, count × input.height × input.width × 3 (NHWC). Present when the model takes images. */
  file: z.string().regex(RELATIVE_FILE, 'must be a relative path inside the bundle').optional(),
  /**
   * Float32 little-endian: the prepared depth, count × 1 × (h·u) × (w·u), then the foreground mask,
   * count × 1 × h × w (h, w: featureSize; u: model.depth.unshuffle). Present when the model takes depth.
   */
  depthFile: z.string().regex(RELATIVE_FILE, 'must be a relative path inside the bundle').optional(),
  count: z.int().min(1),
  /** Expected raw image score of each sample (the manifest's scoring.aggregation), in file order. */
  scores: z.array(z.number()),
  /** A sample passes when |actual − expected| ≤ tolerance × max(1, |expected|): absolute near 0, relative above 1. */
  tolerance: z.number().positive(),
});
export type Golden = z.infer<typeof GoldenSchema>;

/** Names a bundle's own metadata uses; the manifest cannot list files under them. */
const RESERVED_FILES = ['manifest.json', 'signature.json'];

/** What checkGolden reads of a manifest. */
interface GoldenContext {
  model: ModelParams;
  input: { height: number; width: number };
  featureSize: { height: number; width: number };
  graphs: { detector?: string | undefined };
  files: Record<string, { bytes: number }>;
}

/** Golden samples must be inputs of this model's detector graph, with one score each. */
function checkGolden(m: GoldenContext, golden: Golden, ctx: z.RefinementCtx): void {
  if (!m.graphs.detector) {
    ctx.addIssue({ code: 'custom', path: ['golden'], message: 'golden samples are detector inputs: they need a detector graph' });
  }
  if (golden.scores.length !== golden.count) {
    ctx.addIssue({ code: 'custom', path: ['golden', 'scores'], message: `has ${golden.scores.length} scores for ${golden.count} samples` });
  }
  const n = golden.count;
  const { height: H, width: W } = m.input;
  const { height: h, width: w } = m.featureSize;
  const u = m.model.depth?.unshuffle ?? 1;
  const parts = [
    { key: 'file', name: golden.file, needed: m.model.featureChannels > 0, what: 'images', bytes: n * H * W * 3, formula: `${n} × ${H} × ${W} × 3` },
    {
      key: 'depthFile',
      name: golden.depthFile,
      needed: m.model.depthChannels > 0,
      what: 'depth',
      bytes: 4 * n * (h * u * w * u + h * w),
      formula: `4 × ${n} × (${h * u} × ${w * u} + ${h} × ${w})`,
    },
  ];
  for (const p of parts) {
    if (p.needed !== (p.name !== undefined)) {
      const message = p.needed ? `is missing: a ${m.model.mode} model takes ${p.what}` : `must be absent: a ${m.model.mode} model takes no ${p.what}`;
      ctx.addIssue({ code: 'custom', path: ['golden', p.key], message });
      continue;
    }
    const entry = p.name === undefined ? undefined : m.files[p.name];
    if (entry && entry.bytes !== p.bytes) {
      ctx.addIssue({ code: 'custom', path: ['golden', p.key], message: `"${p.name}" has ${entry.bytes} bytes, ${p.formula} = ${p.bytes} expected` });
    }
  }
}

export const BundleManifestSchema = z
  .object({
    format: z.literal(BUNDLE_FORMAT),
    formatVersion: z.literal(BUNDLE_FORMAT_VERSION),
    id: z.string().regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, 'lowercase letters, digits, . _ - (max 64)'),
    version: z.string().regex(SEMVER, 'must be a semantic version like 1.2.3'),
    preset: z.enum(['paper', 'edge', 'custom']),
    model: ModelParamsSchema,
    input: InputSpecSchema,
    /** Spatial size of the feature map (h, w) the head graph is built for. */
    featureSize: z.object({ height: z.int().min(1), width: z.int().min(1) }),
    backbone: BackboneSpecSchema.nullable(),
    graphs: z.object({
      /** features (+ depth, mask) → map, scores */
      head: z.string().regex(RELATIVE_FILE),
      /** image (+ depth, mask) → map, full-size map, scores; absent for feature-level bundles */
      detector: z.string().regex(RELATIVE_FILE).optional(),
    }),
    /** Teacher and student state in the reference key layout. */
    weights: z.string().regex(RELATIVE_FILE),
    calibration: CalibrationSchema.nullable(),
    provenance: ProvenanceSchema,
    metrics: z.record(z.string(), z.number()).default({}),
    /** Optional: bundles without golden samples stay valid (self-test is then skipped). */
    golden: GoldenSchema.optional(),
    files: z.record(z.string(), FileEntrySchema),
  })
  .superRefine((m, ctx) => {
    for (const name of Object.keys(m.files)) {
      if (!RELATIVE_FILE.test(name)) {
        ctx.addIssue({ code: 'custom', path: ['files', name], message: 'file names must be relative paths inside the bundle' });
      }
      if (RESERVED_FILES.includes(name)) {
        ctx.addIssue({ code: 'custom', path: ['files', name], message: `"${name}" is reserved for the bundle's own metadata` });
      }
    }
    const needed = [
      m.graphs.head,
      m.weights,
      ...(m.graphs.detector ? [m.graphs.detector] : []),
      ...(m.backbone ? [m.backbone.file] : []),
      ...(m.golden?.file ? [m.golden.file] : []),
      ...(m.golden?.depthFile ? [m.golden.depthFile] : []),
    ];
    for (const f of needed) {
      if (!m.files[f]) ctx.addIssue({ code: 'custom', path: ['files', f], message: `"${f}" is used by the manifest but has no sha256 entry` });
    }
    if (m.golden) checkGolden(m, m.golden, ctx);
    if (m.model.mode !== 'depth' && !m.backbone && m.graphs.detector) {
      ctx.addIssue({ code: 'custom', path: ['backbone'], message: 'a detector graph for rgb/rgbd needs a backbone' });
    }
    if (m.backbone) {
      const channels = m.backbone.outputs.reduce((s, o) => s + o.channels, 0);
      if (channels !== m.model.featureChannels) {
        ctx.addIssue({
          code: 'custom',
          path: ['model', 'featureChannels'],
          message: `is ${m.model.featureChannels} but the backbone outputs ${channels} channels`,
        });
      }
    }
    if (m.model.mode !== 'rgb' && !m.model.depth) {
      ctx.addIssue({ code: 'custom', path: ['model', 'depth'], message: `mode ${m.model.mode} needs depth parameters` });
    }
  });
export type BundleManifest = z.infer<typeof BundleManifestSchema>;

/** "path.to.field: reason" lines for a failed parse, so an operator sees exactly what is wrong. */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((i) => `${i.path.length ? i.path.map(String).join('.') : '(root)'}: ${i.message}`)
    .join('; ');
}
