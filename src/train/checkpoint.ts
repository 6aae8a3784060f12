/**
 * Training checkpoints: weights, Adam moments and progress in one safetensors file, replaced atomically
 * (write a temp file, fsync, rename, fsync the folder), so a crash or power cut at any moment leaves the
 * previous complete checkpoint in place.
 */
import { readFile, rm } from 'node:fs/promises';
import { writeFileAtomically } from '../storage/atomic-file.js';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { decodeSafetensors, encodeSafetensors } from '../formats/safetensors.js';
import { f32, type HostTensor } from '../onnx/tensor.js';
import type { TrainingState } from './step-runner.js';

export const CheckpointMetaSchema = z.object({
  /** Hash of everything that must match to resume (data, preset, hyper-parameters, seed). */
  runKey: z.string(),
  phase: z.enum(['teacher', 'student']),
  epoch: z.int().min(0),
  /** Batches of `epoch` already done. */
  batchInEpoch: z.int().min(0),
  step: z.int().min(0),
  bestValidation: z.number().nullable(),
  epochsWithoutImprovement: z.int().min(0),
  /** Teacher weights are frozen once the student phase starts; kept here so a resume needs nothing else. */
  history: z.array(z.object({ phase: z.string(), epoch: z.int(), trainLoss: z.number(), validationLoss: z.number().nullable() })),
});
export type CheckpointMeta = z.infer<typeof CheckpointMetaSchema>;

export interface Checkpoint {
  meta: CheckpointMeta;
  state: TrainingState;
  /** Best weights so far (early stopping restores them), by state_dict key. */
  best: Map<string, Float32Array> | null;
  /** The trained teacher, once the student phase has started. */
  teacher: Map<string, HostTensor> | null;
}

export async function saveCheckpoint(path: string, c: Checkpoint, shapes: Map<string, number[]>): Promise<void> {
  const tensors = new Map<string, HostTensor>();
  const put = (prefix: string, m: Map<string, Float32Array>) => {
    for (const [k, v] of m) tensors.set(`${prefix}${k}`, f32(shapes.get(k) ?? [v.length], v));
  };
  put('param/', c.state.params);
  put('adam_m/', c.state.m);
  put('adam_v/', c.state.v);
  if (c.best) put('best/', c.best);
  if (c.teacher) for (const [k, v] of c.teacher) tensors.set(`teacher/${k}`, v);
  const bytes = encodeSafetensors(tensors, { meta: JSON.stringify({ ...c.meta, step: c.state.step }) });
  await writeFileAtomically(path, bytes);
}

export async function loadCheckpoint(path: string): Promise<Checkpoint | null> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch {
    return null;
  }
  // The header is only readable through the metadata; decodeSafetensors checks every tensor's extent.
  const tensors = decodeSafetensors(bytes, path);
  const headerLen = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)));
  const meta = CheckpointMetaSchema.parse(JSON.parse(header.__metadata__.meta));
  const take = (prefix: string) =>
    new Map([...tensors].filter(([k]) => k.startsWith(prefix)).map(([k, v]) => [k.slice(prefix.length), v.data as Float32Array]));
  const best = take('best/');
  const teacher = new Map([...tensors].filter(([k]) => k.startsWith('teacher/')).map(([k, v]) => [k.slice('teacher/'.length), v]));
  return {
    meta,
    state: { step: meta.step, params: take('param/'), m: take('adam_m/'), v: take('adam_v/') },
    best: best.size ? best : null,
    teacher: teacher.size ? teacher : null,
  };
}

export async function removeCheckpoint(path: string): Promise<void> {
  await rm(path, { force: true });
}

export const checkpointPath = (workDir: string) => join(workDir, 'checkpoint.safetensors');
