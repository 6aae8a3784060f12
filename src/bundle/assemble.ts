/**
 * Builds a complete bundle from weights: generates the head and fused detector graphs from the one
 * model definition, stores the weights in the reference layout and writes the manifest.
 */
import type { ModelParams, PresetName } from '../config/model-schema.js';
import type { BackboneSpec, BundleManifest, Calibration, InputSpec } from '../config/bundle-manifest.js';
import { BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION } from '../config/bundle-manifest.js';
import { decodeModel } from '../onnx/serialize.js';
import { decodeSafetensors, encodeSafetensors } from '../formats/safetensors.js';
import { buildDetectorModel, buildHeadModel } from '../model/detector-graph.js';
import {
  studentFromStateDict,
  studentToStateDict,
  teacherFromStateDict,
  teacherToStateDict,
  type StudentWeights,
  type TeacherWeights,
} from '../model/weights.js';
import { readBundleFile, writeBundle, type LoadedBundle } from './bundle-store.js';
import { encodeGoldenDepth, type GoldenDepth } from './golden.js';

export const FILES = {
  head: 'head.onnx',
  detector: 'detector.onnx',
  backbone: 'backbone.onnx',
  weights: 'weights.safetensors',
  golden: 'golden.bin',
  goldenDepth: 'golden-depth.bin',
} as const;

/** Default golden tolerance: float32 graphs agree to far better than this across CPU/CUDA; TensorRT fp16 may need more. */
export const DEFAULT_GOLDEN_TOLERANCE = 1e-3;

export interface BackboneInput {
  bytes: Uint8Array;
  name: string;
  description: string;
  inputName: string;
  outputs: BackboneSpec['outputs'];
}

export interface AssembleInput {
  id: string;
  version: string;
  preset: PresetName | 'custom';
  params: ModelParams;
  teacher: TeacherWeights;
  student: StudentWeights;
  input: Omit<InputSpec, 'layout' | 'dtype' | 'colorSpace'>;
  backbone: BackboneInput | null;
  /** Required without a backbone; otherwise ceil(input / finest stride) unless given. */
  featureSize?: { height: number; width: number };
  calibration: Calibration | null;
  provenance: BundleManifest['provenance'];
  metrics?: Record<string, number>;
  /**
   * Golden samples for the device's self-test after a model swap: `count` detector inputs — uint8 RGB
   * images (N×H×W×3 at the input size) for models that take images, prepared depth and mask for models that
   * take depth — and the image scores the detector graph gives them. Stored as golden.bin and
   * golden-depth.bin (see GoldenSchema).
   */
  golden?: { images?: Uint8Array; depth?: GoldenDepth; count: number; scores: number[]; tolerance?: number };
}

const TEACHER_PREFIX = 'teacher.';
const STUDENT_PREFIX = 'student.';

export function encodeWeights(teacher: TeacherWeights, student: StudentWeights): Uint8Array {
  const all = new Map();
  for (const [k, v] of teacherToStateDict(teacher)) all.set(TEACHER_PREFIX + k, v);
  for (const [k, v] of studentToStateDict(student)) all.set(STUDENT_PREFIX + k, v);
  return encodeSafetensors(all, { format: 'ast-edge weights: teacher.* and student.* in the reference key layout' });
}

export function decodeWeights(bytes: Uint8Array, source: string): { teacher: TeacherWeights; student: StudentWeights } {
  const all = decodeSafetensors(bytes, source);
  const part = (prefix: string) =>
    new Map([...all].filter(([k]) => k.startsWith(prefix)).map(([k, v]) => [k.slice(prefix.length), v]));
  return {
    teacher: teacherFromStateDict(part(TEACHER_PREFIX), `${source} (teacher)`),
    student: studentFromStateDict(part(STUDENT_PREFIX), `${source} (student)`),
  };
}

export async function loadBundleWeights(bundle: LoadedBundle) {
  return decodeWeights(await readBundleFile(bundle, bundle.manifest.weights), `${bundle.source}/${bundle.manifest.weights}`);
}

export async function assembleBundle(dir: string, a: AssembleInput): Promise<BundleManifest> {
  const input: InputSpec = { ...a.input, layout: 'NHWC', dtype: 'uint8', colorSpace: 'RGB' };
  const finest = a.backbone ? Math.min(...a.backbone.outputs.map((o) => o.stride)) : undefined;
  const featureSize =
    a.featureSize ??
    (finest ? { height: Math.ceil(input.height / finest), width: Math.ceil(input.width / finest) } : undefined);
  if (!featureSize) throw new Error('a bundle without a backbone needs an explicit featureSize');

  const head = { params: a.params, featureSize, teacher: a.teacher, student: a.student };
  const files: Record<string, Uint8Array> = {
    [FILES.weights]: encodeWeights(a.teacher, a.student),
    [FILES.head]: buildHeadModel(head),
  };
  if (a.golden?.images) files[FILES.golden] = a.golden.images;
  if (a.golden?.depth) files[FILES.goldenDepth] = encodeGoldenDepth(a.golden.depth);
  let backbone: BackboneSpec | null = null;
  const depthOnly = a.params.mode === 'depth';
  if (a.backbone || depthOnly) {
    if (a.backbone) {
      files[FILES.backbone] = a.backbone.bytes;
      backbone = {
        file: FILES.backbone,
        name: a.backbone.name,
        description: a.backbone.description,
        inputName: a.backbone.inputName,
        outputs: a.backbone.outputs,
      };
    }
    files[FILES.detector] = buildDetectorModel({
      ...head,
      input,
      backbone: backbone && a.backbone ? { spec: backbone, model: decodeModel(a.backbone.bytes) } : null,
      smoothingSigma: a.params.scoring.smoothingSigma,
    });
  }
  return writeBundle(
    dir,
    {
      format: BUNDLE_FORMAT,
      formatVersion: BUNDLE_FORMAT_VERSION,
      id: a.id,
      version: a.version,
      preset: a.preset,
      model: a.params,
      input,
      featureSize,
      backbone,
      graphs: { head: FILES.head, ...(files[FILES.detector] ? { detector: FILES.detector } : {}) },
      weights: FILES.weights,
      calibration: a.calibration,
      provenance: a.provenance,
      metrics: a.metrics ?? {},
      ...(a.golden
        ? {
            golden: {
              ...(a.golden.images ? { file: FILES.golden } : {}),
              ...(a.golden.depth ? { depthFile: FILES.goldenDepth } : {}),
              count: a.golden.count,
              scores: a.golden.scores,
              tolerance: a.golden.tolerance ?? DEFAULT_GOLDEN_TOLERANCE,
            },
          }
        : {}),
    },
    files,
  );
}
