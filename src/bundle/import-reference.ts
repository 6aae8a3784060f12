/**
 * Deploying a model trained with the authors' PyTorch code: reads teacher and student state_dicts
 * (safetensors, reference key layout), reads the network's widths, blocks and kernels off the tensor
 * shapes, and assembles a bundle — with a backbone when one is given, feature-level otherwise.
 */
import { readFile } from 'node:fs/promises';
import { PRESETS, type Mode, type ModelParams, type PresetName } from '../config/model-schema.js';
import type { BundleManifest } from '../config/bundle-manifest.js';
import { decodeSafetensors } from '../formats/safetensors.js';
import { decodeModel, modelSignature } from '../onnx/serialize.js';
import { studentFromStateDict, studentShape, teacherFromStateDict, teacherShape, WeightsError } from '../model/weights.js';
import { assembleBundle, type BackboneInput } from './assemble.js';

export interface ImportReferenceOptions {
  teacherFile: string;
  studentFile: string;
  preset: PresetName;
  mode: Mode;
  out: string;
  backboneFile?: string;
  /** Stride of the backbone output (default: the preset's). */
  backboneStride?: number;
  /** Square input side (default: the preset's). */
  inputSize?: number;
  /** Per-channel normalisation applied after scaling frames to [0, 1] (default none). */
  inputMean?: number[];
  inputStd?: number[];
  /** Feature map size; default input / stride. */
  featureSize?: { height: number; width: number };
  id?: string;
  version?: string;
  toolVersion: string;
}

async function readCheckpoint(path: string) {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new WeightsError(`cannot read checkpoint ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return decodeSafetensors(bytes, path);
}

async function readBackbone(path: string, stride: number, channels: number): Promise<BackboneInput> {
  const bytes = new Uint8Array(await readFile(path));
  const sig = modelSignature(decodeModel(bytes));
  if (sig.inputs.length !== 1) throw new WeightsError(`backbone ${path} must have exactly one input, it has ${sig.inputs.length}`);
  const outputs = sig.outputs.map((o) => ({ name: o.name, channels: typeof o.shape?.[1] === 'number' ? o.shape[1] : channels, stride }));
  const total = outputs.reduce((s, o) => s + o.channels, 0);
  if (total !== channels) {
    throw new WeightsError(`backbone ${path} outputs ${total} channels but the checkpoint's teacher expects ${channels} feature channels`);
  }
  return { bytes, name: 'imported', description: `imported from ${path}`, inputName: sig.inputs[0]!.name, outputs };
}

export async function importReference(o: ImportReferenceOptions): Promise<BundleManifest> {
  const teacher = teacherFromStateDict(await readCheckpoint(o.teacherFile), o.teacherFile);
  const student = studentFromStateDict(await readCheckpoint(o.studentFile), o.studentFile);
  const t = teacherShape(teacher);
  const s = studentShape(student);
  const preset = PRESETS[o.preset];
  const depthChannels = o.mode === 'rgb' ? 0 : preset.depth.unshuffle ** 2;
  const featureChannels = t.channels - depthChannels;
  if (featureChannels < 0 || (o.mode === 'depth' && featureChannels !== 0)) {
    throw new WeightsError(`teacher has ${t.channels} channels, which does not fit mode ${o.mode} (${depthChannels} depth channels)`);
  }
  if (s.inChannels !== t.condChannels + t.channels || s.outChannels !== t.channels) {
    throw new WeightsError(
      `student maps ${s.inChannels} → ${s.outChannels} channels but the teacher needs ${t.condChannels + t.channels} → ${t.channels}`,
    );
  }
  const params: ModelParams = {
    mode: o.mode,
    featureChannels,
    depthChannels,
    posChannels: t.condChannels,
    teacher: { blocks: teacher.blocks.length, hidden: t.hidden, kernelSizes: t.kernelSizes, clamp: preset.teacher.clamp },
    student: { ...preset.student, width: s.width, residualBlocks: s.residualBlocks },
    scoring: preset.scoring,
    ...(o.mode === 'rgb' ? {} : { depth: preset.depth }),
  };
  const inputSize = o.inputSize ?? preset.inputSize;
  const stride = o.backboneStride ?? preset.backbone.stride;
  const backbone = o.backboneFile && o.mode !== 'depth' ? await readBackbone(o.backboneFile, stride, featureChannels) : null;
  const sameAsPreset =
    s.width === preset.student.width && t.hidden === preset.teacher.hidden && featureChannels === preset.backbone.channels;
  return assembleBundle(o.out, {
    id: o.id ?? `reference-${o.mode}`,
    version: o.version ?? '1.0.0',
    preset: sameAsPreset ? o.preset : 'custom',
    params,
    teacher,
    student,
    // The documented EfficientNet export folds ImageNet normalisation into the graph: frames enter as [0, 1].
    input: { width: inputSize, height: inputSize, mean: o.inputMean ?? [0, 0, 0], std: o.inputStd ?? [1, 1, 1] },
    backbone,
    featureSize: o.featureSize ?? { height: Math.ceil(inputSize / stride), width: Math.ceil(inputSize / stride) },
    calibration: null,
    provenance: {
      source: 'import-reference',
      tool: `ast-edge ${o.toolVersion}`,
      createdAt: new Date().toISOString(),
      from: `${o.teacherFile}, ${o.studentFile}`,
    },
  });
}
