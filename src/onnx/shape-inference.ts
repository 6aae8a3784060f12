/**
 * Static shape inference for the operators ast-edge builds with. Training graphs have a fixed batch, so
 * every shape is known; the gradient rules rely on that to undo broadcasting and to size transposed
 * convolutions. Symbolic dims (strings) pass through where an op keeps them; anything not inferable is
 * `undefined`, never a guess.
 */
import type { Attribute, Dim, Graph, Value } from './graph.js';
import type { HostTensor } from './tensor.js';

type Shape = readonly Dim[];

function constInts(g: Graph, v: Value | null | undefined): number[] | undefined {
  if (!v) return undefined;
  const t: HostTensor | undefined = g.initializerOf(v);
  if (!t) return undefined;
  return Array.from(t.data as ArrayLike<number | bigint>, Number);
}

function intsAttr(a: Attribute | undefined): readonly number[] | undefined {
  return a && a.kind === 'ints' ? a.value : undefined;
}

function intAttr(a: Attribute | undefined, fallback: number): number {
  return a && a.kind === 'int' ? a.value : fallback;
}

export function broadcastShapes(a: Shape, b: Shape): Dim[] | undefined {
  const rank = Math.max(a.length, b.length);
  const out: Dim[] = [];
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1;
    const db = b[b.length - rank + i] ?? 1;
    if (da === db || db === 1) out.push(da);
    else if (da === 1) out.push(db);
    else return undefined;
  }
  return out;
}

const normAxis = (axis: number, rank: number) => (axis < 0 ? axis + rank : axis);

const SAME_SHAPE = new Set([
  'Relu', 'LeakyRelu', 'Exp', 'Atan', 'Sigmoid', 'Identity', 'Neg', 'Sqrt', 'Tanh', 'Clip', 'Cast', 'Log',
  'Abs', 'Reciprocal', 'BatchNormalization', 'Softplus', 'Sign', 'Floor', 'Ceil', 'Round', 'Erf',
]);
const BROADCAST = new Set(['Add', 'Sub', 'Mul', 'Div', 'Pow', 'Max', 'Min', 'Equal', 'Less', 'Greater', 'Where']);

function convOut(size: Dim, k: number, stride: number, dilation: number, padBegin: number, padEnd: number): Dim | undefined {
  if (typeof size !== 'number') return undefined;
  return Math.floor((size + padBegin + padEnd - dilation * (k - 1) - 1) / stride) + 1;
}

/** Output shapes of one node, or undefined entries where they cannot be known statically. */
export function inferShapes(
  g: Graph,
  opType: string,
  inputs: readonly (Value | null)[],
  attrs: Readonly<Record<string, Attribute>>,
  outputs: number,
): (Dim[] | undefined)[] {
  const none = () => new Array<Dim[] | undefined>(outputs).fill(undefined);
  const s = inputs.map((v) => v?.shape);
  const x = s[0];
  if (SAME_SHAPE.has(opType)) return x ? [[...x]] : none();
  if (BROADCAST.has(opType)) {
    let out: Dim[] | undefined = x ? [...x] : undefined;
    for (const other of s.slice(1)) out = out && other ? broadcastShapes(out, other) : undefined;
    return [out];
  }
  if (!x) return none();
  const rank = x.length;
  switch (opType) {
    case 'Conv': {
      const w = s[1];
      if (!w) return none();
      const spatial = rank - 2;
      const kernel = intsAttr(attrs.kernel_shape) ?? w.slice(2).map(Number);
      const strides = intsAttr(attrs.strides) ?? new Array(spatial).fill(1);
      const dil = intsAttr(attrs.dilations) ?? new Array(spatial).fill(1);
      const autoPad = attrs.auto_pad?.kind === 'string' ? attrs.auto_pad.value : 'NOTSET';
      const pads = intsAttr(attrs.pads) ?? new Array(2 * spatial).fill(0);
      const out: Dim[] = [x[0]!, w[0]!];
      for (let i = 0; i < spatial; i++) {
        const size = x[2 + i]!;
        if (autoPad === 'SAME_UPPER' || autoPad === 'SAME_LOWER') {
          if (typeof size !== 'number') return none();
          out.push(Math.ceil(size / strides[i]!));
        } else {
          const d = convOut(size, kernel[i]!, strides[i]!, dil[i]!, pads[i]!, pads[i + spatial]!);
          if (d === undefined) return none();
          out.push(d);
        }
      }
      return [out];
    }
    case 'ConvTranspose': {
      const w = s[1];
      if (!w) return none();
      const spatial = rank - 2;
      const group = intAttr(attrs.group, 1);
      const kernel = w.slice(2).map(Number);
      const strides = intsAttr(attrs.strides) ?? new Array(spatial).fill(1);
      const dil = intsAttr(attrs.dilations) ?? new Array(spatial).fill(1);
      const pads = intsAttr(attrs.pads) ?? new Array(2 * spatial).fill(0);
      const outPad = intsAttr(attrs.output_padding) ?? new Array(spatial).fill(0);
      const explicit = intsAttr(attrs.output_shape);
      const out: Dim[] = [x[0]!, typeof w[1] === 'number' ? w[1] * group : w[1]!];
      for (let i = 0; i < spatial; i++) {
        if (explicit) {
          out.push(explicit[i]!);
          continue;
        }
        const size = x[2 + i]!;
        if (typeof size !== 'number') return none();
        out.push(strides[i]! * (size - 1) + outPad[i]! + (kernel[i]! - 1) * dil[i]! + 1 - pads[i]! - pads[i + spatial]!);
      }
      return [out];
    }
    case 'Pad': {
      const pads = constInts(g, inputs[1]);
      if (!pads) return none();
      return [x.map((d, i) => (typeof d === 'number' ? d + pads[i]! + pads[i + rank]! : d))];
    }
    case 'Concat': {
      const axis = normAxis(intAttr(attrs.axis, 0), rank);
      if (s.some((v) => !v)) return none();
      let total: Dim = 0;
      for (const v of s) total = typeof total === 'number' && typeof v![axis] === 'number' ? total + (v![axis] as number) : '?';
      if (total === '?') return none();
      return [x.map((d, i) => (i === axis ? total : d))];
    }
    case 'Split': {
      const axis = normAxis(intAttr(attrs.axis, 0), rank);
      const sizes = constInts(g, inputs[1]);
      if (!sizes) return none();
      return sizes.map((n) => x.map((d, i) => (i === axis ? n : d)));
    }
    case 'Slice': {
      const starts = constInts(g, inputs[1]);
      const ends = constInts(g, inputs[2]);
      const axes = constInts(g, inputs[3]) ?? starts?.map((_, i) => i);
      const steps = constInts(g, inputs[4]) ?? starts?.map(() => 1);
      if (!starts || !ends || !axes || !steps) return none();
      const out: Dim[] = [...x];
      for (let j = 0; j < axes.length; j++) {
        const a = normAxis(axes[j]!, rank);
        const size = x[a];
        const step = steps[j]!;
        if (typeof size !== 'number') return none();
        if (step > 0) {
          const clamp = (v: number) => Math.min(Math.max(v < 0 ? v + size : v, 0), size);
          out[a] = Math.max(0, Math.ceil((clamp(ends[j]!) - clamp(starts[j]!)) / step));
        } else {
          // Negative steps walk from start down to (excluding) end; both clamp to [−1, size − 1].
          const clamp = (v: number) => Math.min(Math.max(v < 0 ? v + size : v, -1), size - 1);
          out[a] = Math.max(0, Math.ceil((clamp(starts[j]!) - clamp(ends[j]!)) / -step));
        }
      }
      return [out];
    }
    case 'Gather': {
      const axis = normAxis(intAttr(attrs.axis, 0), rank);
      const idx = s[1];
      if (!idx) return none();
      return [[...x.slice(0, axis), ...idx, ...x.slice(axis + 1)]];
    }
    case 'ReduceMean':
    case 'ReduceSum':
    case 'ReduceMax':
    case 'ReduceMin':
    case 'ReduceSumSquare': {
      const axes = (intsAttr(attrs.axes) ?? constInts(g, inputs[1]))?.map((a) => normAxis(a, rank));
      const keep = intAttr(attrs.keepdims, 1) === 1;
      const all = axes ?? x.map((_, i) => i);
      return [keep ? x.map((d, i) => (all.includes(i) ? 1 : d)) : x.filter((_, i) => !all.includes(i))];
    }
    case 'Reshape': {
      const target = constInts(g, inputs[1]);
      if (!target) return none();
      const out: Dim[] = target.map((d, i) => (d === 0 ? x[i]! : d));
      const minus = out.indexOf(-1);
      if (minus >= 0) {
        if (x.some((d) => typeof d !== 'number') || out.some((d) => typeof d !== 'number')) return none();
        const known = (out as number[]).filter((d) => d !== -1).reduce((a, b) => a * b, 1);
        out[minus] = (x as number[]).reduce((a, b) => a * b, 1) / known;
      }
      return [out];
    }
    case 'Transpose': {
      const perm = intsAttr(attrs.perm) ?? x.map((_, i) => rank - 1 - i);
      return [perm.map((p) => x[p]!)];
    }
    case 'MatMul': {
      const y = s[1];
      if (!y || rank < 2 || y.length < 2) return none();
      const batch = broadcastShapes(x.slice(0, -2), y.slice(0, -2));
      return batch ? [[...batch, x[rank - 2]!, y[y.length - 1]!]] : none();
    }
    case 'Gemm': {
      const y = s[1];
      if (!y) return none();
      const transA = intAttr(attrs.transA, 0);
      const transB = intAttr(attrs.transB, 0);
      return [[transA ? x[1]! : x[0]!, transB ? y[0]! : y[1]!]];
    }
    case 'Unsqueeze': {
      const axes = constInts(g, inputs[1]);
      if (!axes) return none();
      const outRank = rank + axes.length;
      const norm = axes.map((a) => normAxis(a, outRank));
      const out: Dim[] = [];
      let k = 0;
      for (let i = 0; i < outRank; i++) out.push(norm.includes(i) ? 1 : x[k++]!);
      return [out];
    }
    case 'Squeeze': {
      const axes = constInts(g, inputs[1])?.map((a) => normAxis(a, rank)) ?? x.flatMap((d, i) => (d === 1 ? [i] : []));
      return [x.filter((_, i) => !axes.includes(i))];
    }
    case 'Expand': {
      const target = constInts(g, inputs[1]);
      return [target ? broadcastShapes(x, target) : undefined];
    }
    case 'Shape':
      return [[rank]];
    case 'SpaceToDepth': {
      const b = intAttr(attrs.blocksize, 1);
      const [n, c, h, w] = x;
      if (typeof c !== 'number' || typeof h !== 'number' || typeof w !== 'number') return none();
      return [[n!, c * b * b, h / b, w / b]];
    }
    case 'DepthToSpace': {
      const b = intAttr(attrs.blocksize, 1);
      const [n, c, h, w] = x;
      if (typeof c !== 'number' || typeof h !== 'number' || typeof w !== 'number') return none();
      return [[n!, c / (b * b), h * b, w * b]];
    }
    case 'Tile': {
      const reps = constInts(g, inputs[1]);
      return [reps ? x.map((d, i) => (typeof d === 'number' ? d * reps[i]! : d)) : undefined];
    }
    default:
      return none();
  }
}
