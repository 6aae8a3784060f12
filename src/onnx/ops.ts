/**
 * Typed wrappers for the ONNX operators ast-edge uses. Each adds one node (or a few) to a `Graph` and
 * knows its operator's attribute types, so model code reads like the paper's formulas.
 */
import { Graph, Value, attr, type Attribute } from './graph.js';
import { f32, i64 } from './tensor.js';

export function scalar(g: Graph, value: number, name = 'const'): Value {
  return g.initializer(name, f32([], [value]));
}

export function ints(g: Graph, values: readonly number[], name = 'ints'): Value {
  return g.initializer(name, i64([values.length], values));
}

const binary = (opType: string) => (g: Graph, a: Value, b: Value, name?: string) =>
  g.op(opType, [a, b], {}, { name: name ?? opType.toLowerCase() });
const unary = (opType: string) => (g: Graph, x: Value, name?: string) =>
  g.op(opType, [x], {}, { name: name ?? opType.toLowerCase() });

export const add = binary('Add');
export const sub = binary('Sub');
export const mul = binary('Mul');
export const div = binary('Div');
export const matmul = binary('MatMul');
export const relu = unary('Relu');
export const exp = unary('Exp');
export const atan = unary('Atan');
export const sigmoid = unary('Sigmoid');
export const identity = unary('Identity');
export const shape = (g: Graph, x: Value) => g.op('Shape', [x], {}, { name: 'shape', dtypes: ['int64'] });

export function leakyRelu(g: Graph, x: Value, alpha: number): Value {
  return g.op('LeakyRelu', [x], { alpha: attr.float(alpha) }, { name: 'leaky_relu' });
}

export interface ConvOptions {
  pads?: readonly number[];
  strides?: readonly number[];
  dilations?: readonly number[];
  group?: number;
  name?: string;
}

export function conv(g: Graph, x: Value, w: Value, b: Value | null, o: ConvOptions = {}): Value {
  const a: Record<string, Attribute> = {};
  if (o.pads) a.pads = attr.ints(o.pads);
  if (o.strides) a.strides = attr.ints(o.strides);
  if (o.dilations) a.dilations = attr.ints(o.dilations);
  if (o.group && o.group !== 1) a.group = attr.int(o.group);
  return g.op('Conv', b ? [x, w, b] : [x, w], a, { name: o.name ?? 'conv' });
}

/** Pads the last two axes of an NCHW tensor by `p` on every side. */
export function padSpatial(g: Graph, x: Value, p: number, mode: 'constant' | 'edge' | 'reflect'): Value {
  if (p === 0) return x;
  const pads = ints(g, [0, 0, p, p, 0, 0, p, p], 'pads');
  return g.op('Pad', [x, pads], { mode: attr.string(mode) }, { name: `pad_${mode}` });
}

export function concat(g: Graph, xs: readonly Value[], axis: number, name = 'concat'): Value {
  return g.op('Concat', xs, { axis: attr.int(axis) }, { name });
}

/** Splits `x` along `axis` into pieces of the given sizes. */
export function split(g: Graph, x: Value, axis: number, sizes: readonly number[], name = 'split'): Value[] {
  return g.node('Split', [x, ints(g, sizes, 'split_sizes')], { axis: attr.int(axis) }, { outputs: sizes.length, name });
}

export function slice(g: Graph, x: Value, starts: readonly number[], ends: readonly number[], axes: readonly number[]): Value {
  return g.op('Slice', [x, ints(g, starts, 'starts'), ints(g, ends, 'ends'), ints(g, axes, 'axes')], {}, { name: 'slice' });
}

export function gather(g: Graph, x: Value, indices: Value, axis: number, name = 'gather'): Value {
  return g.op('Gather', [x, indices], { axis: attr.int(axis) }, { name });
}

type ReduceOp = 'ReduceMean' | 'ReduceMax' | 'ReduceSum' | 'ReduceMin';

/** Reduce* moved `axes` from an attribute to an input at opset 18 (ReduceSum already at 13). */
export function reduce(g: Graph, opType: ReduceOp, x: Value, axes: readonly number[], keepdims: boolean): Value {
  const keep = { keepdims: attr.int(keepdims ? 1 : 0) };
  const axesAsInput = opType === 'ReduceSum' || g.opset >= 18;
  const name = opType.replace('Reduce', 'reduce_').toLowerCase();
  return axesAsInput
    ? g.op(opType, [x, ints(g, axes, 'axes')], keep, { name })
    : g.op(opType, [x], { ...keep, axes: attr.ints(axes) }, { name });
}

export function reshape(g: Graph, x: Value, shapeValues: readonly number[] | Value): Value {
  const s = Array.isArray(shapeValues) ? ints(g, shapeValues as number[], 'shape') : (shapeValues as Value);
  return g.op('Reshape', [x, s], {}, { name: 'reshape' });
}

export function transpose(g: Graph, x: Value, perm: readonly number[]): Value {
  return g.op('Transpose', [x], { perm: attr.ints(perm) }, { name: 'transpose' });
}

export function unsqueeze(g: Graph, x: Value, axes: readonly number[]): Value {
  return g.op('Unsqueeze', [x, ints(g, axes, 'axes')], {}, { name: 'unsqueeze' });
}

export function squeeze(g: Graph, x: Value, axes: readonly number[]): Value {
  return g.op('Squeeze', [x, ints(g, axes, 'axes')], {}, { name: 'squeeze' });
}

export function expand(g: Graph, x: Value, toShape: Value): Value {
  return g.op('Expand', [x, toShape], {}, { name: 'expand' });
}

export function clip(g: Graph, x: Value, min: number, max: number): Value {
  return g.op('Clip', [x, scalar(g, min, 'clip_min'), scalar(g, max, 'clip_max')], {}, { name: 'clip' });
}

/** Bilinear resize of the last two axes of NCHW to a fixed size (align_corners=False semantics). */
export function resizeBilinear(g: Graph, x: Value, sizes: Value): Value {
  return g.op(
    'Resize',
    [x, null, null, sizes],
    {
      mode: attr.string('linear'),
      coordinate_transformation_mode: attr.string('half_pixel'),
    },
    { name: 'resize' },
  );
}

/** Bicubic resize (a = −0.75, half-pixel: PyTorch's `bicubic`, align_corners=False). */
export function resizeBicubic(g: Graph, x: Value, sizes: Value): Value {
  return g.op(
    'Resize',
    [x, null, null, sizes],
    {
      mode: attr.string('cubic'),
      cubic_coeff_a: attr.float(-0.75),
      coordinate_transformation_mode: attr.string('half_pixel'),
    },
    { name: 'resize_cubic' },
  );
}

export function spaceToDepth(g: Graph, x: Value, blocksize: number): Value {
  return g.op('SpaceToDepth', [x], { blocksize: attr.int(blocksize) }, { name: 'space_to_depth' });
}
