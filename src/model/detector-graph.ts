/**
 * Assembles the graphs a bundle ships:
 *  - head: features (+ depth, mask) → anomaly map and image scores (what `score --features` runs);
 *  - detector: uint8 RGB frames (+ depth, mask) → backbone → head → maps and scores, one fused graph,
 *    which is what TensorRT should see.
 * Both come from the same builders, so the head inside the detector is the head.
 */
import { Graph, Value, attr } from '../onnx/graph.js';
import * as op from '../onnx/ops.js';
import { encodeModel, embedModel, type DecodedModel } from '../onnx/serialize.js';
import { f32 } from '../onnx/tensor.js';
import type { ModelParams } from '../config/model-schema.js';
import type { BackboneSpec, InputSpec } from '../config/bundle-manifest.js';
import { positionalEncoding } from './positional-encoding.js';
import { buildTeacherForward } from './teacher-flow.js';
import { buildStudentInference } from './student.js';
import { buildAnomalyMap, buildImageScores, buildUpsampledMap } from './anomaly-map.js';
import type { StudentWeights, TeacherWeights } from './weights.js';

/** Graph input and output names: the contract between bundles and the runtime. */
export const IO = {
  image: 'image',
  features: 'features',
  depth: 'depth',
  mask: 'mask',
  map: 'map',
  mapFull: 'map_full',
  scoreMax: 'score_max',
  scoreMean: 'score_mean',
} as const;

export interface HeadSpec {
  params: ModelParams;
  featureSize: { height: number; width: number };
  teacher: TeacherWeights;
  student: StudentWeights;
}

interface HeadInputs {
  /** Already-concatenated teacher input [F, unshuffled D] (training-time scoring); replaces features/depth. */
  teacherInput?: Value;
  features?: Value;
  /** Prepared depth at 8× feature resolution, [N, 1, 8h, 8w]. */
  depth?: Value;
  /** Foreground mask at feature resolution, [N, 1, h, w]. */
  mask?: Value;
}

/** Adds teacher, student and scoring on top of `inputs`; returns the [N,1,h,w] map and scores. */
export function addHead(g: Graph, spec: HeadSpec, inputs: HeadInputs) {
  const { params, featureSize } = spec;
  const { height: h, width: w } = featureSize;
  const parts: Value[] = [];
  if (inputs.teacherInput) parts.push(inputs.teacherInput);
  else if (params.featureChannels > 0) {
    if (!inputs.features) throw new Error('head needs features');
    parts.push(inputs.features);
  }
  if (params.depthChannels > 0 && !inputs.teacherInput) {
    if (!inputs.depth) throw new Error('head needs depth');
    const unshuffle = params.depth?.unshuffle ?? 8;
    parts.push(op.spaceToDepth(g, inputs.depth, unshuffle));
  }
  // Teacher and student both see [F, D]; the student additionally gets P in front (reference order).
  const x = parts.length === 1 ? parts[0]! : op.concat(g, parts, 1, 'teacher_input');
  const batch = op.slice(g, op.shape(g, x), [0], [1], [0]);
  const expandShape = op.concat(g, [batch, op.ints(g, [1, 1, 1], 'ones3')], 0);
  const pe = positionalEncoding(params.posChannels, h, w);
  const pos = op.expand(g, g.initializer('positional_encoding', f32([1, ...pe.dims], pe.data)), expandShape);

  const { z } = buildTeacherForward(g, x, pos, spec.teacher, { clamp: params.teacher.clamp });
  const zStudent = buildStudentInference(g, op.concat(g, [pos, x], 1, 'student_input'), spec.student, {
    params: params.student,
  });
  const maps = buildAnomalyMap(g, z, zStudent, params.depthChannels > 0 ? inputs.mask : undefined);
  return { map: maps.map, scores: buildImageScores(g, maps) };
}

function headInputs(g: Graph, params: ModelParams, featureSize: { height: number; width: number }, features?: Value): HeadInputs {
  const { height: h, width: w } = featureSize;
  const r = params.depth?.unshuffle ?? 8;
  return {
    features,
    ...(params.depthChannels > 0
      ? {
          depth: g.input(IO.depth, 'float32', ['N', 1, h * r, w * r]),
          mask: g.input(IO.mask, 'float32', ['N', 1, h, w]),
        }
      : {}),
  };
}

/** The feature-level graph: `features` [N, C, h, w] (+ `depth`, `mask`) → `map` [N, h, w], scores [N]. */
export function buildHeadModel(spec: HeadSpec): Uint8Array {
  const g = new Graph('ast_head');
  const { height: h, width: w } = spec.featureSize;
  const features =
    spec.params.featureChannels > 0 ? g.input(IO.features, 'float32', ['N', spec.params.featureChannels, h, w]) : undefined;
  const { map, scores } = addHead(g, spec, headInputs(g, spec.params, spec.featureSize, features));
  g.output(op.squeeze(g, map, [1]), IO.map);
  g.output(scores.max, IO.scoreMax);
  g.output(scores.mean, IO.scoreMean);
  return encodeModel(g, { docString: 'AST head: teacher flow + student + anomaly map' });
}

/**
 * Scoring from the teacher's input as training keeps it (features and unshuffled depth already
 * concatenated): `x` [N, C+D, h, w] (+ `mask`) → `map` [N, h, w], scores. Same head, same numbers.
 */
export function buildScoringModel(spec: HeadSpec): Uint8Array {
  const g = new Graph('ast_scoring');
  const { height: h, width: w } = spec.featureSize;
  const x = g.input('x', 'float32', ['N', spec.params.featureChannels + spec.params.depthChannels, h, w]);
  const mask = spec.params.depthChannels > 0 ? g.input(IO.mask, 'float32', ['N', 1, h, w]) : undefined;
  const { map, scores } = addHead(g, spec, { teacherInput: x, ...(mask ? { mask } : {}) });
  g.output(op.squeeze(g, map, [1]), IO.map);
  g.output(scores.max, IO.scoreMax);
  g.output(scores.mean, IO.scoreMean);
  return encodeModel(g);
}

export interface DetectorSpec extends HeadSpec {
  input: InputSpec;
  backbone: { spec: BackboneSpec; model: DecodedModel } | null;
  smoothingSigma: number;
}

/** Frames as the camera delivers them (uint8 RGB NHWC) → normalised NCHW float32 for the backbone. */
function preprocess(g: Graph, image: Value, input: InputSpec): Value {
  const asFloat = g.op('Cast', [image], { to: { kind: 'int', value: 1 } }, { name: 'to_float', dtypes: ['float32'] });
  const nchw = op.transpose(g, asFloat, [0, 3, 1, 2]);
  const scale = input.std.map((s) => 1 / (255 * s));
  const shift = input.mean.map((m, i) => -m / input.std[i]!);
  const scaled = op.mul(g, nchw, g.initializer('input_scale', f32([1, 3, 1, 1], scale)));
  return op.add(g, scaled, g.initializer('input_shift', f32([1, 3, 1, 1], shift)), 'normalised_image');
}

export interface FeatureModelSpec {
  input: InputSpec;
  backbone: { spec: BackboneSpec; model: DecodedModel };
  featureSize: { height: number; width: number };
}

/**
 * The detector's front: uint8 frames → normalisation → (mirrored context) → backbone → features at the
 * finest stride (coarser outputs bilinearly resized and concatenated) → context cropped off.
 */
function addFrontEnd(g: Graph, image: Value, spec: FeatureModelSpec): Value {
  const { input, backbone, featureSize } = spec;
  const pad = input.contextPad ?? 0;
  let x = preprocess(g, image, input);
  if (pad > 0) x = g.op('Pad', [x, op.ints(g, [0, 0, pad, pad, 0, 0, pad, pad], 'context_pads')], { mode: attr.string('reflect') }, { name: 'context_pad' });
  const embedded = embedModel(g, backbone.model, { [backbone.spec.inputName]: x }, 'backbone/');
  const outs = backbone.spec.outputs.map((o) => {
    const v = embedded.outputs.get(o.name);
    if (!v) throw new Error(`backbone has no output "${o.name}"`);
    return v;
  });
  const finest = Math.min(...backbone.spec.outputs.map((o) => o.stride));
  const margin = pad / finest;
  const padded = { height: featureSize.height + 2 * margin, width: featureSize.width + 2 * margin };
  let features = outs[0]!;
  if (outs.length > 1) {
    const batchAndChannels = (v: Value) => op.slice(g, op.shape(g, v), [0], [2], [0]);
    const resized = outs.map((v, i) =>
      i === 0 ? v : op.resizeBilinear(g, v, op.concat(g, [batchAndChannels(v), op.ints(g, [padded.height, padded.width])], 0)),
    );
    features = op.concat(g, resized, 1, 'multi_scale_features');
  }
  if (margin > 0) features = op.slice(g, features, [margin, margin], [margin + featureSize.height, margin + featureSize.width], [2, 3]);
  return features;
}

/**
 * The detector's front alone: `image` uint8 [N, H, W, 3] → `features` [N, C, h, w]. Training extracts
 * features with exactly the preprocessing and backbone the fused detector will run.
 */
export function buildFeatureModel(spec: FeatureModelSpec): Uint8Array {
  const opset = Math.max(17, spec.backbone.model.opset_import?.find((o) => !o.domain)?.version ?? 17);
  const g = new Graph('ast_features', opset);
  const image = g.input(IO.image, 'uint8', ['N', spec.input.height, spec.input.width, 3]);
  g.output(addFrontEnd(g, image, spec), IO.features);
  return encodeModel(g, { docString: 'AST feature extractor: preprocessing + backbone' });
}

/** The fused graph: `image` uint8 [N, H, W, 3] (+ depth, mask) → `map`, `map_full`, scores. */
export function buildDetectorModel(spec: DetectorSpec): Uint8Array {
  const opset = Math.max(17, spec.backbone ? (spec.backbone.model.opset_import?.find((o) => !o.domain)?.version ?? 17) : 17);
  const g = new Graph('ast_detector', opset);
  const { input } = spec;
  let features: Value | undefined;
  if (spec.params.featureChannels > 0) {
    if (!spec.backbone) throw new Error('an rgb/rgbd detector needs a backbone');
    const image = g.input(IO.image, 'uint8', ['N', input.height, input.width, 3]);
    features = addFrontEnd(g, image, { input, backbone: spec.backbone, featureSize: spec.featureSize });
  }
  const { map, scores } = addHead(g, spec, headInputs(g, spec.params, spec.featureSize, features));
  g.output(op.squeeze(g, map, [1]), IO.map);
  const full = buildUpsampledMap(g, map, input.height, input.width, spec.smoothingSigma);
  g.output(op.squeeze(g, full, [1]), IO.mapFull);
  g.output(scores.max, IO.scoreMax);
  g.output(scores.mean, IO.scoreMean);
  return encodeModel(g, { docString: 'AST detector: backbone + teacher flow + student + anomaly map' });
}
