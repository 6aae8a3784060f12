/**
 * `ast-agent train`: fits (or fine-tunes) the teacher by maximum likelihood, then the student by
 * distillation, on good images only; calibrates the decision threshold on held-out good images; writes a
 * bundle. Resumable: checkpoints every N steps and at every epoch end, and a restarted run with the same
 * settings continues from the last checkpoint.
 */
import { createHash } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import * as ort from 'onnxruntime-node';
import type { Logger } from 'pino';
import { PRESETS, modelParamsFor, type Mode, type ModelParams, type PresetName } from '../config/model-schema.js';
import type { BundleManifest, Calibration } from '../config/bundle-manifest.js';
import type { RuntimeOptions } from '../config/runtime-schema.js';
import { decodeModel, modelSignature } from '../onnx/serialize.js';
import type { HostTensor } from '../onnx/tensor.js';
import { buildFeatureModel, buildScoringModel } from '../model/detector-graph.js';
import { ensureDefaultBackbone } from '../model/backbone/mobilenet-v2.js';
import { initStudent, initTeacher, randomPermutation, seededRandom } from '../model/init.js';
import { numpyPermutation } from '../model/numpy-permutation.js';
import { verdictFor } from '../model/verdict.js';
import {
  studentFromStateDict,
  studentToStateDict,
  teacherFromStateDict,
  teacherToStateDict,
  type StudentWeights,
  type TeacherWeights,
} from '../model/weights.js';
import { loadSession } from '../runtime/session.js';
import { assembleBundle, loadBundleWeights, type AssembleInput, type BackboneInput } from '../bundle/assemble.js';
import { readBundle, readBundleFile } from '../bundle/bundle-store.js';
import { Detector, type DepthInputs } from '../runtime/detector.js';
import { depthInputsFor } from '../runtime/depth-inputs.js';
import { PAPER_ADAM, type AdamOptions } from './adam.js';
import { checkpointPath, loadCheckpoint, saveCheckpoint, type Checkpoint, type CheckpointMeta } from './checkpoint.js';
import { buildStudentEval, buildTeacherEval } from './eval-graphs.js';
import { computeFeatureSet, featureSetKey, loadFeatureSet, saveFeatureSet, type FeatureSet } from './feature-set.js';
import { decodeDepth, decodeRgb, loadDataset, type Dataset, type Sample } from './datasets/index.js';
import { calibrate } from './evaluation/calibration.js';
import type { ProgressReporter } from './progress.js';
import { TrainStepRunner } from './step-runner.js';
import { buildStudentTrainStep, buildTeacherTrainStep, type TrainStepGraph } from './train-graphs.js';

export class TrainingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TrainingError';
  }
}

export type CalibrationRequest = { method: 'false-reject-rate'; target: number } | { method: 'best-f1' };

export interface TrainOptions {
  data: string;
  className?: string;
  preset: PresetName;
  mode: Mode;
  out: string;
  /** Fine-tune from this bundle's weights. */
  from?: string;
  /** Which networks a fine-tune retrains (default both). */
  finetune?: 'teacher' | 'student' | 'both';
  teacherEpochs?: number;
  studentEpochs?: number;
  batchSize?: number;
  /** Learning rate of both phases (overridden per phase by teacherLr / studentLr). */
  lr?: number;
  teacherLr?: number;
  studentLr?: number;
  /** Share of the good training images held out for early stopping and calibration (default 0.15). */
  validationFraction?: number;
  /** Epochs without validation improvement before stopping (default 3). */
  patience?: number;
  /** ONNX feature extractor (required for the paper preset: EfficientNet-B5 up to block 35). */
  backbone?: string;
  backboneStride?: number;
  inputSize?: number;
  /** Mirrored context around frames before the backbone, pixels (default: the preset's). */
  contextPad?: number;
  teacherHidden?: number;
  studentWidth?: number;
  residualBlocks?: number;
  /** Image score the verdict uses: max of the anomaly map (the paper; small defects) or its mean (diffuse ones). */
  aggregation?: 'max' | 'mean';
  calibration?: CalibrationRequest;
  /** Checkpoints and feature caches (default `<out>.work`). */
  workDir?: string;
  checkpointEvery?: number;
  keepWork?: boolean;
  maxTrainImages?: number;
  seed?: number;
  id?: string;
  version?: string;
  runtime?: Partial<RuntimeOptions>;
  toolVersion: string;
}

export interface TrainResult {
  manifest: BundleManifest;
  teacherValidationNll: number | null;
  studentValidationLoss: number | null;
  seconds: number;
  resumed: boolean;
  trainImages: number;
  validationImages: number;
  /** Held-out good images as judged at training time (what the bundle must reproduce). */
  validationScores: { id: string; score: number; verdict: ReturnType<typeof verdictFor> }[];
  history: CheckpointMeta['history'];
}

interface ModelSetup {
  params: ModelParams;
  input: BundleManifest['input'];
  featureSize: { height: number; width: number };
  backbone: BackboneInput | null;
  teacher: TeacherWeights;
  student: StudentWeights;
  preset: PresetName | 'custom';
}

async function readBackboneFile(path: string, stride: number): Promise<BackboneInput> {
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(await readFile(path));
  } catch (e) {
    throw new TrainingError(`cannot read backbone ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const sig = modelSignature(decodeModel(bytes));
  const outputs = sig.outputs.map((o) => {
    const c = o.shape?.[1];
    if (typeof c !== 'number') throw new TrainingError(`backbone ${path}: output ${o.name} has no static channel count`);
    return { name: o.name, channels: c, stride };
  });
  return { bytes, name: 'user', description: `from ${path}`, inputName: sig.inputs[0]!.name, outputs };
}

async function setUpModel(o: TrainOptions, seed: number): Promise<ModelSetup> {
  if (o.from) {
    const base = await readBundle(o.from);
    const m = base.manifest;
    if (m.model.mode !== o.mode) throw new TrainingError(`bundle ${o.from} is a ${m.model.mode} model; cannot fine-tune it as ${o.mode}`);
    const { teacher, student } = await loadBundleWeights(base);
    const backbone = m.backbone
      ? { bytes: await readBundleFile(base, m.backbone.file), name: m.backbone.name, description: m.backbone.description, inputName: m.backbone.inputName, outputs: m.backbone.outputs }
      : null;
    return { params: m.model, input: m.input, featureSize: m.featureSize, backbone, teacher, student, preset: m.preset };
  }
  const preset = PRESETS[o.preset];
  const inputSize = o.inputSize ?? preset.inputSize;
  let backbone: BackboneInput | null = null;
  let stride = o.backboneStride ?? preset.backbone.stride;
  let mean = [0, 0, 0];
  let std = [1, 1, 1];
  if (o.mode !== 'depth') {
    if (o.backbone) backbone = await readBackboneFile(o.backbone, stride);
    else if (o.preset === 'edge') {
      const b = await ensureDefaultBackbone({ layers: preset.backbone.layers });
      backbone = {
        bytes: new Uint8Array(await readFile(b.file)),
        name: b.family,
        description: 'MobileNetV2 α=1.4 (ImageNet, fine-tuned by nsfwjs; see docs/backbone.md)',
        inputName: b.input.name,
        outputs: b.outputs.map((x) => ({ name: x.name, layer: x.layer, channels: x.channels, stride: x.stride })),
      };
      stride = Math.min(...b.outputs.map((x) => x.stride));
      mean = b.input.mean;
      std = b.input.std;
    } else {
      throw new TrainingError(
        `the ${o.preset} preset needs its backbone: pass --backbone FILE.onnx (EfficientNet-B5 up to block 35, see docs/backbone.md)`,
      );
    }
  }
  const featureChannels = backbone ? backbone.outputs.reduce((s, x) => s + x.channels, 0) : 0;
  const base = modelParamsFor(o.preset, o.mode, featureChannels);
  const params: ModelParams = {
    ...base,
    teacher: { ...base.teacher, hidden: o.teacherHidden ?? base.teacher.hidden },
    student: { ...base.student, width: o.studentWidth ?? base.student.width, residualBlocks: o.residualBlocks ?? base.student.residualBlocks },
    scoring: { ...base.scoring, aggregation: o.aggregation ?? base.scoring.aggregation },
  };
  const channels = params.featureChannels + params.depthChannels;
  const featureSize = { height: Math.ceil(inputSize / stride), width: Math.ceil(inputSize / stride) };
  // NumPy's seed-i permutations, as the reference: a model trained here and one trained with the
  // authors' code differ only by their weights.
  const teacher = initTeacher({ channels, condChannels: params.posChannels, hidden: params.teacher.hidden, kernelSizes: params.teacher.kernelSizes, seed });
  teacher.blocks.forEach((b, i) => (b.permutation = numpyPermutation(i, channels)));
  const student = initStudent({ inChannels: params.posChannels + channels, outChannels: channels, width: params.student.width, residualBlocks: params.student.residualBlocks, seed: seed + 1 });
  const custom = o.teacherHidden !== undefined || o.studentWidth !== undefined || o.residualBlocks !== undefined || o.inputSize !== undefined;
  return {
    params,
    input: {
      width: inputSize,
      height: inputSize,
      layout: 'NHWC',
      dtype: 'uint8',
      colorSpace: 'RGB',
      mean,
      std,
      ...(backbone && (o.contextPad ?? preset.contextPad) > 0 ? { contextPad: o.contextPad ?? preset.contextPad } : {}),
    },
    featureSize,
    backbone,
    teacher,
    student,
    preset: custom ? 'custom' : o.preset,
  };
}

/** Held-out good images: the layout's validation split, else a seeded share of train. */
export function splitTrainValidation(
  dataset: Pick<Dataset, 'train' | 'validation'>,
  fraction: number,
  seed: number,
  maxTrain?: number,
): { train: Sample[]; validation: Sample[] } {
  let train = dataset.train;
  let validation = dataset.validation ?? [];
  if (validation.length === 0) {
    const order = randomPermutation(train.length, seededRandom(seed ^ 0x5eed));
    const held = Math.max(1, Math.round(train.length * fraction));
    const heldSet = new Set(order.slice(0, held));
    validation = train.filter((_, i) => heldSet.has(i));
    train = train.filter((_, i) => !heldSet.has(i));
  }
  if (maxTrain !== undefined) train = train.slice(0, maxTrain);
  return { train, validation };
}

function weightsMap(sd: Map<string, HostTensor>): Map<string, HostTensor> {
  return new Map([...sd].filter(([, t]) => t.dtype === 'float32'));
}

/** Replaces float tensors of a state dict with trained values (keeps permutations and counters). */
function withValues(sd: Map<string, HostTensor>, values: Map<string, HostTensor>): Map<string, HostTensor> {
  return new Map([...sd].map(([k, t]) => [k, values.get(k) ?? t]));
}

interface PhaseArgs {
  phase: 'teacher' | 'student';
  graph: TrainStepGraph;
  initial: Map<string, HostTensor>;
  train: FeatureSet;
  targets: Float32Array[] | null;
  epochs: number;
  patience: number;
  adam: AdamOptions;
  seed: number;
  validate: (weights: Map<string, HostTensor>) => Promise<number | null>;
  resume: Checkpoint | null;
  save: (c: Omit<Checkpoint, 'teacher'>) => Promise<void>;
  checkpointEvery: number;
  runKey: string;
  history: CheckpointMeta['history'];
  runtime: Partial<RuntimeOptions>;
  progress: ProgressReporter;
  logger: Logger;
}

async function runPhase(a: PhaseArgs): Promise<{ weights: Map<string, HostTensor>; best: number | null }> {
  const batch = a.graph.batch;
  const n = a.train.x.length;
  const perEpoch = Math.floor(n / batch);
  const runner = await TrainStepRunner.create(a.graph, a.initial, a.adam, a.runtime, a.logger);
  let epoch = 0;
  let batchInEpoch = 0;
  let best: number | null = null;
  let bestWeights: Map<string, Float32Array> | null = null;
  let stale = 0;
  if (a.resume && a.resume.meta.phase === a.phase) {
    runner.restore(a.resume.state);
    epoch = a.resume.meta.epoch;
    batchInEpoch = a.resume.meta.batchInEpoch;
    best = a.resume.meta.bestValidation;
    bestWeights = a.resume.best;
    stale = a.resume.meta.epochsWithoutImprovement;
    a.progress.message(`resuming ${a.phase} training at epoch ${epoch + 1}, step ${runner.step}`, { phase: a.phase, epoch, step: runner.step });
  }
  const plane = a.train.height * a.train.width;
  const per = a.train.channels * plane;
  const xb = new Float32Array(batch * per);
  const tb = a.targets ? new Float32Array(batch * per) : undefined;
  const mb = a.train.mask ? new Float32Array(batch * plane) : undefined;
  /** Saves the state with `batchesDone` batches of the current epoch behind it. */
  const checkpoint = async (batchesDone: number) => {
    const st = runner.state();
    await a.save({
      meta: { runKey: a.runKey, phase: a.phase, epoch, batchInEpoch: batchesDone, step: st.step, bestValidation: best, epochsWithoutImprovement: stale, history: a.history },
      state: st,
      best: bestWeights,
    });
  };
  const totalSteps = a.epochs * perEpoch;
  try {
    while (epoch < a.epochs && stale < a.patience) {
      const order = randomPermutation(n, seededRandom(a.seed * 1000 + epoch + (a.phase === 'student' ? 500 : 0)));
      let lossSum = 0;
      let lossCount = 0;
      for (; batchInEpoch < perEpoch; batchInEpoch++) {
        for (let i = 0; i < batch; i++) {
          const s = order[batchInEpoch * batch + i]!;
          xb.set(a.train.x[s]!, i * per);
          if (tb) tb.set(a.targets![s]!, i * per);
          if (mb) mb.set(a.train.mask![s]!, i * plane);
        }
        const loss = await runner.run({ x: xb, ...(tb ? { target: tb } : {}), ...(mb ? { mask: mb } : {}) });
        if (!Number.isFinite(loss)) throw new TrainingError(`${a.phase} loss became ${loss} at step ${runner.step}; lower the learning rate (--lr)`);
        lossSum += loss;
        lossCount++;
        a.progress.update({ phase: a.phase, epoch: epoch + 1, epochs: a.epochs, step: runner.step, steps: totalSteps, loss });
        if (runner.step % a.checkpointEvery === 0) await checkpoint(batchInEpoch + 1);
      }
      const weights = runner.weights();
      const validation = await a.validate(weights);
      const trainLoss = lossCount ? lossSum / lossCount : Number.NaN;
      a.history.push({ phase: a.phase, epoch: epoch + 1, trainLoss, validationLoss: validation });
      a.progress.message(
        `${a.phase} epoch ${epoch + 1}/${a.epochs}: train loss ${trainLoss.toFixed(5)}${validation !== null ? `, validation ${validation.toFixed(5)}` : ''}`,
        { phase: a.phase, epoch: epoch + 1, trainLoss, validation },
      );
      if (validation === null || best === null || validation < best) {
        best = validation;
        bestWeights = new Map([...weights].map(([k, v]) => [k, v.data.slice()]));
        stale = 0;
      } else stale++;
      epoch++;
      batchInEpoch = 0;
      await checkpoint(0);
    }
    if (stale >= a.patience) a.progress.message(`${a.phase}: stopped early after ${epoch} epochs (no validation improvement for ${a.patience})`);
    const finalWeights = bestWeights ?? new Map([...runner.weights()].map(([k, v]) => [k, v.data]));
    const shapes = new Map(a.graph.params.map((p) => [p.key, p.shape]));
    return {
      weights: new Map([...finalWeights].map(([k, v]) => [k, { dtype: 'float32' as const, dims: shapes.get(k)!, data: v }])),
      best,
    };
  } finally {
    await runner.release();
  }
}

async function runBatched(session: ort.InferenceSession, set: FeatureSet, extra: (start: number, count: number) => Record<string, ort.Tensor>, out: string[], batch = 8) {
  const plane = set.height * set.width;
  const per = set.channels * plane;
  const results: Record<string, Float32Array[]> = Object.fromEntries(out.map((o) => [o, []]));
  for (let start = 0; start < set.x.length; start += batch) {
    const count = Math.min(batch, set.x.length - start);
    const x = new Float32Array(count * per);
    for (let i = 0; i < count; i++) x.set(set.x[start + i]!, i * per);
    const feeds: Record<string, ort.Tensor> = { x: new ort.Tensor('float32', x, [count, set.channels, set.height, set.width]), ...extra(start, count) };
    if (set.mask) {
      const m = new Float32Array(count * plane);
      for (let i = 0; i < count; i++) m.set(set.mask[start + i]!, i * plane);
      feeds.mask = new ort.Tensor('float32', m, [count, 1, set.height, set.width]);
    }
    const r = await session.run(feeds);
    for (const o of out) {
      const data = r[o]!.data as Float32Array;
      const each = data.length / count;
      for (let i = 0; i < count; i++) results[o]!.push(data.slice(i * each, (i + 1) * each));
    }
  }
  return results;
}

const stack = (arrays: Float32Array[], from: number, count: number, per: number) => {
  const out = new Float32Array(count * per);
  for (let i = 0; i < count; i++) out.set(arrays[from + i]!, i * per);
  return out;
};

export async function train(o: TrainOptions, logger: Logger, progress: ProgressReporter): Promise<TrainResult> {
  const started = Date.now();
  const seed = o.seed ?? 1;
  const dataset = await loadDataset(o.data, { ...(o.className ? { className: o.className } : {}) });
  const setup = await setUpModel(o, seed);
  const { params, featureSize } = setup;
  const preset = PRESETS[o.preset];
  const split = splitTrainValidation(dataset, o.validationFraction ?? 0.15, seed, o.maxTrainImages);
  const batchSize = Math.min(o.batchSize ?? preset.training.batchSize, split.train.length);
  if (split.train.length < 2) throw new TrainingError(`dataset ${dataset.root} has ${split.train.length} training image(s) after holding out validation; at least 2 are needed`);
  const teacherAdam: AdamOptions = { ...PAPER_ADAM, lr: o.teacherLr ?? o.lr ?? preset.training.teacherLr, weightDecay: preset.training.weightDecay };
  const studentAdam: AdamOptions = { ...teacherAdam, lr: o.studentLr ?? o.lr ?? preset.training.studentLr };
  const teacherEpochs = o.teacherEpochs ?? preset.training.teacherEpochs;
  const studentEpochs = o.studentEpochs ?? preset.training.studentEpochs;
  const finetune = o.from ? (o.finetune ?? 'both') : 'both';
  const backboneHash = setup.backbone ? createHash('sha256').update(setup.backbone.bytes).digest('hex') : null;
  const dataKey = { root: dataset.root, train: split.train.map((s) => s.id), validation: split.validation.map((s) => s.id), backboneHash, params, input: setup.input, featureSize };
  const patience = o.patience ?? 3;
  const runKey = featureSetKey({ dataKey, from: o.from ?? null, finetune, batchSize, teacherAdam, studentAdam, teacherEpochs, studentEpochs, seed, patience });
  const workDir = resolve(o.workDir ?? `${o.out}.work`);
  const ckptPath = checkpointPath(workDir);
  const runtime = o.runtime ?? {};
  logger.info({ dataset: dataset.root, layout: dataset.layout, train: split.train.length, validation: split.validation.length, mode: o.mode, preset: setup.preset, workDir }, 'training set-up');

  // Features, once (cached on disk for resumes).
  const manifestLike = { model: params, input: setup.input, featureSize };
  const featureSession = setup.backbone
    ? (
        await loadSession(
          buildFeatureModel({
            input: setup.input,
            backbone: { spec: { file: 'backbone.onnx', ...setup.backbone }, model: decodeModel(setup.backbone.bytes) },
            featureSize,
          }),
          runtime,
        )
      ).session
    : null;
  const features = async (samples: Sample[], name: string): Promise<FeatureSet> => {
    const key = featureSetKey({ ...dataKey, name, ids: samples.map((s) => s.id) });
    const cached = await loadFeatureSet(workDir, key);
    if (cached) return cached;
    const t = Date.now();
    const set = await computeFeatureSet(samples, { manifest: manifestLike, featureSession, batch: 8 });
    await saveFeatureSet(workDir, key, set);
    progress.message(`features of ${samples.length} ${name} images in ${((Date.now() - t) / 1000).toFixed(1)} s`, { images: samples.length, name });
    return set;
  };
  const trainSet = await features(split.train, 'train');
  const valSet = await features(split.validation, 'validation');
  await featureSession?.release();

  let resume = await loadCheckpoint(ckptPath);
  if (resume && resume.meta.runKey !== runKey) {
    progress.message(`ignoring checkpoint ${ckptPath}: it belongs to a run with other settings or data`);
    resume = null;
  }
  const history: CheckpointMeta['history'] = resume?.meta.history ?? [];
  const shapeOf = (sd: Map<string, HostTensor>) => new Map([...sd].map(([k, t]) => [k, [...t.dims]]));
  const stepShape = { batch: batchSize, channels: trainSet.channels, height: featureSize.height, width: featureSize.width, masked: params.depthChannels > 0 };
  const evalShape = { channels: trainSet.channels, height: featureSize.height, width: featureSize.width, masked: params.depthChannels > 0 };
  /** What both phases share: data, stopping rule, checkpointing, reporting. */
  const phaseCommon = {
    train: trainSet,
    patience,
    seed,
    checkpointEvery: o.checkpointEvery ?? 50,
    runKey,
    history,
    runtime,
    progress,
    logger,
  };

  // Teacher: maximum likelihood.
  let teacher = setup.teacher;
  let teacherNll: number | null = null;
  const teacherSd = teacherToStateDict(teacher);
  if (resume?.meta.phase === 'student' && resume.teacher) {
    teacher = teacherFromStateDict(resume.teacher, `${ckptPath} (teacher)`);
  } else if (finetune !== 'student') {
    const validateTeacher = async (w: Map<string, HostTensor>) => {
      if (valSet.x.length === 0) return null;
      const t = teacherFromStateDict(withValues(teacherSd, w));
      const s = (await loadSession(buildTeacherEval(params, t, evalShape), runtime)).session;
      const r = await runBatched(s, valSet, () => ({}), ['nll']);
      await s.release();
      return r.nll!.reduce((acc, v) => acc + v[0]!, 0) / r.nll!.length;
    };
    const out = await runPhase({
      phase: 'teacher',
      graph: buildTeacherTrainStep(params, teacher, stepShape, teacherAdam),
      initial: weightsMap(teacherSd),
      targets: null,
      epochs: teacherEpochs,
      adam: teacherAdam,
      validate: validateTeacher,
      resume,
      save: (c) => saveCheckpoint(ckptPath, { ...c, teacher: null }, shapeOf(teacherSd)),
      ...phaseCommon,
    });
    teacher = teacherFromStateDict(withValues(teacherSd, out.weights));
    teacherNll = out.best;
  }

  // Student: distillation of the trained teacher's z.
  const tEval = (await loadSession(buildTeacherEval(params, teacher, evalShape), runtime)).session;
  const zTrain = (await runBatched(tEval, trainSet, () => ({}), ['z'])).z!;
  const zVal = (await runBatched(tEval, valSet, () => ({}), ['z'])).z!;
  await tEval.release();
  let student = setup.student;
  let studentLoss: number | null = null;
  const studentSd = studentToStateDict(student);
  if (finetune !== 'teacher') {
    const teacherState = teacherToStateDict(teacher);
    const per = trainSet.channels * featureSize.height * featureSize.width;
    const validateStudent = async (w: Map<string, HostTensor>) => {
      if (valSet.x.length === 0) return null;
      const s = studentFromStateDict(withValues(studentSd, w));
      const session = (await loadSession(buildStudentEval(params, s, evalShape), runtime)).session;
      const r = await runBatched(session, valSet, (start, count) => ({ target: new ort.Tensor('float32', stack(zVal, start, count, per), [count, valSet.channels, valSet.height, valSet.width]) }), ['loss']);
      await session.release();
      return r.loss!.reduce((acc, v) => acc + v[0]!, 0) / r.loss!.length;
    };
    const out = await runPhase({
      phase: 'student',
      graph: buildStudentTrainStep(params, student, stepShape, studentAdam),
      initial: weightsMap(studentSd),
      targets: zTrain,
      epochs: studentEpochs,
      adam: studentAdam,
      validate: validateStudent,
      resume: resume?.meta.phase === 'student' ? resume : null,
      save: (c) => saveCheckpoint(ckptPath, { ...c, teacher: teacherState }, shapeOf(studentSd)),
      ...phaseCommon,
    });
    student = studentFromStateDict(withValues(studentSd, out.weights));
    studentLoss = out.best;
  }

  // Calibration on held-out good images (or best F1 with the test split's labelled defects).
  const head = { params, featureSize, teacher, student };
  const scoring = (await loadSession(buildScoringModel(head), runtime)).session;
  const scoreOf = async (set: FeatureSet) => {
    const r = await runBatched(scoring, set, () => ({}), ['score_max', 'score_mean']);
    return set.x.map((_, i) => (params.scoring.aggregation === 'max' ? r.score_max![i]![0]! : r.score_mean![i]![0]!));
  };
  const calibrationSet = valSet.x.length > 0 ? valSet : trainSet;
  const goodScores = await scoreOf(calibrationSet);
  let calibration: Calibration;
  const request = o.calibration ?? { method: 'false-reject-rate', target: 0.01 };
  if (request.method === 'best-f1') {
    const defects = dataset.test.filter((s) => s.label === 'defect');
    if (defects.length === 0) throw new TrainingError(`best-F1 calibration needs labelled defects; ${dataset.root} has no defective test images`);
    const defectSet = await features(defects, 'test-defects');
    calibration = calibrate(goodScores, { method: 'best-f1', defectScores: await scoreOf(defectSet) });
  } else {
    calibration = calibrate(goodScores, { method: 'false-reject-rate', targetFalseRejectRate: request.target });
  }
  await scoring.release();
  const trainingVerdicts = goodScores.map((s) => verdictFor(s, calibration.threshold));

  const seconds = (Date.now() - started) / 1000;
  const assembly: AssembleInput = {
    id: o.id ?? `${dataset.name}-${o.mode}`.toLowerCase().replace(/[^a-z0-9._-]/g, '-').slice(0, 64),
    version: o.version ?? '1.0.0',
    preset: setup.preset,
    params,
    teacher,
    student,
    input: {
      width: setup.input.width,
      height: setup.input.height,
      mean: setup.input.mean,
      std: setup.input.std,
      ...(setup.input.contextPad ? { contextPad: setup.input.contextPad } : {}),
    },
    backbone: setup.backbone,
    featureSize,
    calibration,
    provenance: {
      source: o.from ? 'fine-tune' : 'train',
      tool: `ast-edge ${o.toolVersion}`,
      createdAt: new Date().toISOString(),
      ...(o.from ? { from: o.from } : {}),
      dataset: `${dataset.root} (${dataset.layout}; ${split.train.length} train, ${split.validation.length} validation good images)`,
      notes: `teacher epochs ≤${teacherEpochs}, student epochs ≤${studentEpochs}, batch ${batchSize}, lr ${teacherAdam.lr}/${studentAdam.lr}, seed ${seed}${o.from ? `, fine-tuned: ${finetune}` : ''}`,
    },
    metrics: {
      trainSeconds: Math.round(seconds),
      trainImages: split.train.length,
      validationImages: split.validation.length,
      ...(teacherNll !== null ? { teacherValidationNll: teacherNll } : {}),
      ...(studentLoss !== null ? { studentValidationLoss: studentLoss } : {}),
    },
  };
  let manifest = await assembleBundle(o.out, assembly);
  const golden = await goldenSamples(o.out, split.validation.length > 0 ? split.validation : split.train, manifest);
  if (golden) manifest = await assembleBundle(o.out, { ...assembly, golden });

  // The written bundle must reproduce the verdicts computed here (same graphs, same threshold).
  await verifyVerdicts(o.out, calibrationSet, trainingVerdicts, params);
  if (!o.keepWork) await rm(workDir, { recursive: true, force: true });
  return {
    manifest,
    teacherValidationNll: teacherNll,
    studentValidationLoss: studentLoss,
    seconds,
    resumed: resume !== null,
    trainImages: split.train.length,
    validationImages: split.validation.length,
    validationScores: calibrationSet.ids.map((id, i) => ({ id, score: goodScores[i]!, verdict: trainingVerdicts[i]! })),
    history,
  };
}

/** Inverse of the pixel-unshuffle by r (channel c·r² + i·r + j ← pixel (r·y + i, r·x + j)), for C = 1. */
function pixelShuffle(x: Float32Array, r: number, h: number, w: number): Float32Array {
  const out = new Float32Array(r * r * h * w);
  for (let i = 0; i < r; i++)
    for (let j = 0; j < r; j++)
      for (let y = 0; y < h; y++)
        for (let xx = 0; xx < w; xx++) out[(y * r + i) * (w * r) + xx * r + j] = x[((i * r + j) * h + y) * w + xx]!;
  return out;
}

/**
 * A few held-out good samples with the scores the bundle's fused detector gives them: the device re-scores
 * them after an update and refuses a model that does not reproduce them. Stored as the detector's inputs:
 * the frame at input size for models that take images, the prepared depth and mask for models that take depth.
 */
async function goldenSamples(bundleDir: string, samples: readonly Sample[], manifest: BundleManifest, count = 4): Promise<AssembleInput['golden'] | null> {
  if (!manifest.graphs.detector) return null;
  const takesImages = manifest.model.featureChannels > 0;
  const takesDepth = manifest.model.depthChannels > 0;
  const chosen = samples.filter((s) => (!takesImages || s.image) && (!takesDepth || s.depth)).slice(0, count);
  if (chosen.length === 0) return null;
  const { width, height } = manifest.input;
  let images: Uint8Array | undefined;
  if (takesImages) {
    images = new Uint8Array(chosen.length * width * height * 3);
    for (const [i, s] of chosen.entries()) images.set(await decodeRgb(s.image!, { width, height }), i * width * height * 3);
  }
  const depth = takesDepth ? depthInputsFor(manifest, await Promise.all(chosen.map((s) => decodeDepth(s.depth!)))) : undefined;
  return goldenFromInputs(bundleDir, { ...(images ? { images } : {}), ...(depth ? { depth } : {}) }, chosen.length);
}

/** Golden samples from detector inputs (frames at the bundle's input size and/or prepared depth): with the scores its fused detector gives them. */
export async function goldenFromInputs(
  bundleDir: string,
  inputs: { images?: Uint8Array; depth?: DepthInputs },
  count: number,
): Promise<NonNullable<AssembleInput['golden']>> {
  const bundle = await readBundle(bundleDir);
  const { width, height } = bundle.manifest.input;
  const detector = await Detector.load(bundle, 'detector', { warmupRuns: 0 });
  try {
    const images = inputs.images ? { dtype: 'uint8' as const, dims: [count, height, width, 3], data: inputs.images } : null;
    const r = await detector.inspect(images, inputs.depth);
    const scores = Array.from(bundle.manifest.model.scoring.aggregation === 'mean' ? r.scoreMean : r.scoreMax);
    return { ...inputs, count, scores };
  } finally {
    await detector.release();
  }
}

async function verifyVerdicts(bundleDir: string, set: FeatureSet, expected: ReturnType<typeof verdictFor>[], params: ModelParams): Promise<void> {
  const bundle = await readBundle(bundleDir);
  const detector = await Detector.load(bundle, 'head', { warmupRuns: 0 });
  try {
    const { height: h, width: w } = bundle.manifest.featureSize;
    const plane = h * w;
    const c = params.featureChannels;
    const r = params.depth?.unshuffle ?? 8;
    for (let i = 0; i < set.x.length; i++) {
      const x = set.x[i]!;
      const features = c > 0 ? { dtype: 'float32' as const, dims: [1, c, h, w], data: x.subarray(0, c * plane) } : null;
      const depth =
        params.depthChannels > 0
          ? {
              depth: { dtype: 'float32' as const, dims: [1, 1, h * r, w * r], data: pixelShuffle(x.subarray(c * plane), r, h, w) },
              mask: { dtype: 'float32' as const, dims: [1, 1, h, w], data: set.mask![i]! },
            }
          : undefined;
      const res = await detector.scoreFeatures(features, depth);
      const score = params.scoring.aggregation === 'max' ? res.scoreMax[0]! : res.scoreMean[0]!;
      const verdict = verdictFor(score, bundle.manifest.calibration!.threshold);
      if (verdict !== expected[i]) {
        throw new TrainingError(`bundle ${bundleDir} gives ${verdict} for validation image ${set.ids[i]} where training computed ${expected[i]}: refusing a bundle that disagrees with its training`);
      }
    }
  } finally {
    await detector.release();
  }
}
