/**
 * Reverse-mode automatic differentiation over a `Graph`: appends the gradient nodes of a scalar loss with
 * respect to chosen values to the same graph, so one ONNX model computes forward pass, gradients and (with
 * the optimizer ops) the weight update in a single ONNX Runtime run.
 *
 * Each operator has a rule mapping output gradients to input gradients. Rules use the static shapes the
 * builder infers (training graphs have a fixed batch) to undo broadcasting and to size transposed convs.
 */
import { Graph, GraphError, Value, attr, type Attribute, type Dim, type GraphNode } from './graph.js';
import * as op from './ops.js';
import { f32, i64 } from './tensor.js';

/**
 * Maps output gradients to input gradients. `wants[i]` says whether input i needs one, so rules can skip
 * work nobody uses (e.g. the input gradient of a network's first convolution).
 */
export type GradientRule = (
  g: Graph,
  node: GraphNode,
  outputGrads: readonly (Value | null)[],
  wants: readonly boolean[],
) => (Value | null)[];

function staticShape(v: Value, what: string): number[] {
  if (!v.shape || v.shape.some((d) => typeof d !== 'number')) {
    throw new GraphError(`autodiff needs the static shape of ${what} "${v.name}" (got [${v.shape?.join(', ') ?? 'unknown'}])`);
  }
  return v.shape as number[];
}

function zerosLike(g: Graph, v: Value): Value {
  const shape = staticShape(v, 'a value whose gradient is zero');
  return op.expand(g, op.scalar(g, 0, 'zero'), op.ints(g, shape, 'zeros_shape'));
}

/** Sums a broadcast gradient back down to `target`'s shape. */
export function unbroadcast(g: Graph, grad: Value, target: Value): Value {
  const gs = staticShape(grad, 'a gradient');
  const ts = staticShape(target, 'a broadcast operand');
  if (gs.length === ts.length && gs.every((d, i) => d === ts[i])) return grad;
  const lead = gs.length - ts.length;
  const axes: number[] = [];
  gs.forEach((d, i) => {
    if (i < lead || (ts[i - lead] === 1 && d !== 1)) axes.push(i);
  });
  let out = axes.length ? op.reduce(g, 'ReduceSum', grad, axes, true) : grad;
  if (lead > 0 || axes.length) out = op.reshape(g, out, ts);
  return out;
}

function intsOf(a: Attribute | undefined): readonly number[] | undefined {
  return a?.kind === 'ints' ? a.value : undefined;
}
function intOf(a: Attribute | undefined, fallback: number): number {
  return a?.kind === 'int' ? a.value : fallback;
}
function floatOf(a: Attribute | undefined, fallback: number): number {
  return a?.kind === 'float' ? a.value : fallback;
}
function constValues(g: Graph, v: Value | null | undefined, what: string): number[] {
  const t = v ? g.initializerOf(v) : undefined;
  if (!t) throw new GraphError(`autodiff needs ${what} to be a constant`);
  return Array.from(t.data as ArrayLike<number | bigint>, Number);
}

const where = (g: Graph, cond: Value, a: Value, b: Value) => g.op('Where', [cond, a, b], {}, { name: 'where' });
const greater = (g: Graph, a: Value, b: Value) => g.op('Greater', [a, b], {}, { name: 'greater', dtypes: ['bool'] });
const less = (g: Graph, a: Value, b: Value) => g.op('Less', [a, b], {}, { name: 'less', dtypes: ['bool'] });

/**
 * dW of a convolution as one GEMM per kernel tap: dW[:, :, i, j] = dY[Cout, N·h·w] · X_pad(shifted by i, j)[N·h·w, Cin].
 * X is laid out channels-last once, so each shifted view is a contiguous [N·h·w, Cin] matrix and the
 * reduction over batch and pixels is a large matrix product (a convolution with a batch-sized kernel, the
 * textbook form, runs several times slower on CPUs).
 */
function convWeightGrad(g: Graph, x: Value, dy: Value, w: Value, node: GraphNode): Value {
  const ws = staticShape(w, 'conv weights');
  const [cout, cin, kh, kw] = ws as [number, number, number, number];
  const pads = intsOf(node.attributes.pads) ?? [0, 0, 0, 0];
  const strides = intsOf(node.attributes.strides) ?? [1, 1];
  const dil = intsOf(node.attributes.dilations) ?? [1, 1];
  if (node.attributes.auto_pad?.kind === 'string' && node.attributes.auto_pad.value !== 'NOTSET') {
    throw new GraphError(`gradient of Conv with auto_pad=${node.attributes.auto_pad.value} is not supported; use explicit pads`);
  }
  const [n, , oh, ow] = staticShape(dy, 'conv output gradient') as [number, number, number, number];
  let xp = op.transpose(g, x, [0, 2, 3, 1]); // [N, H, W, Cin]
  if (pads.some((p) => p !== 0)) {
    xp = g.op('Pad', [xp, op.ints(g, [0, pads[0]!, pads[1]!, 0, 0, pads[2]!, pads[3]!, 0], 'pads')], { mode: attr.string('constant') }, { name: 'pad_dw' });
  }
  const dyMat = op.reshape(g, op.transpose(g, dy, [1, 0, 2, 3]), [cout, n * oh * ow]);
  const taps: Value[] = [];
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      const y0 = i * dil[0]!;
      const x0 = j * dil[1]!;
      const view = g.op(
        'Slice',
        [xp, op.ints(g, [y0, x0], 'starts'), op.ints(g, [y0 + (oh - 1) * strides[0]! + 1, x0 + (ow - 1) * strides[1]! + 1], 'ends'), op.ints(g, [1, 2], 'axes'), op.ints(g, strides, 'steps')],
        {},
        { name: 'tap_view' },
      );
      const tap = op.matmul(g, dyMat, op.reshape(g, view, [n * oh * ow, cin])); // [Cout, Cin]
      taps.push(op.unsqueeze(g, tap, [2]));
    }
  }
  const stacked = taps.length === 1 ? taps[0]! : op.concat(g, taps, 2, 'dw_taps');
  return op.reshape(g, stacked, ws);
}

/** dX of a stride-1 convolution as a convolution of dY with the flipped, transposed kernel. */
function convInputGradStride1(g: Graph, dy: Value, w: Value, pads: readonly number[], dil: readonly number[]): Value {
  const ws = staticShape(w, 'conv weights');
  const flipped = g.op(
    'Slice',
    [op.transpose(g, w, [1, 0, 2, 3]), op.ints(g, [-1, -1], 'starts'), op.ints(g, [-(2 ** 31), -(2 ** 31)], 'ends'), op.ints(g, [2, 3], 'axes'), op.ints(g, [-1, -1], 'steps')],
    {},
    { name: 'flip_kernel' },
  );
  const reach = [(ws[2]! - 1) * dil[0]!, (ws[3]! - 1) * dil[1]!];
  return op.conv(g, dy, flipped, null, {
    pads: [reach[0]! - pads[0]!, reach[1]! - pads[1]!, reach[0]! - pads[2]!, reach[1]! - pads[3]!],
    dilations: dil,
    name: 'conv_dx',
  });
}

function convGrad(g: Graph, node: GraphNode, dy: Value, wants: readonly boolean[] = [true, true, true]): (Value | null)[] {
  const [x, w, b] = node.inputs as [Value, Value, Value | null];
  const group = intOf(node.attributes.group, 1);
  if (group !== 1) return groupedConvGrad(g, node, dy, group);
  const xs = staticShape(x, 'conv input');
  const ws = staticShape(w, 'conv weights');
  const pads = intsOf(node.attributes.pads) ?? [0, 0, 0, 0];
  const strides = intsOf(node.attributes.strides) ?? [1, 1];
  const dil = intsOf(node.attributes.dilations) ?? [1, 1];
  // Explicit pads plus output_padding (not output_shape, whose automatic padding split may differ
  // from asymmetric forward pads) give exactly X's size.
  const dys = staticShape(dy, 'conv output gradient');
  const outPad = [0, 1].map(
    (i) => xs[2 + i]! - (strides[i]! * (dys[2 + i]! - 1) + (ws[2 + i]! - 1) * dil[i]! + 1 - pads[i]! - pads[i + 2]!),
  );
  const stride1 = strides.every((v) => v === 1) && pads.every((p, i) => p <= (ws[2 + (i % 2)]! - 1) * dil[i % 2]!);
  const dx = !wants[0]
    ? null
    : stride1
      ? convInputGradStride1(g, dy, w, pads, dil)
      : g.op(
        'ConvTranspose',
        [dy, w],
        {
          strides: attr.ints(strides),
          dilations: attr.ints(dil),
          pads: attr.ints(pads),
          kernel_shape: attr.ints(ws.slice(2)),
          ...(outPad.some((p) => p !== 0) ? { output_padding: attr.ints(outPad) } : {}),
        },
        { name: 'conv_dx' },
      );
  const dw = wants[1] ? convWeightGrad(g, x, dy, w, node) : null;
  const db = b && wants[2] ? op.reduce(g, 'ReduceSum', dy, [0, 2, 3], false) : null;
  return [dx, dw, db];
}

/** Grouped convolution: differentiate group by group (channel slices of X, W and dY). */
function groupedConvGrad(g: Graph, node: GraphNode, dy: Value, group: number): (Value | null)[] {
  const [x, w, b] = node.inputs as [Value, Value, Value | null];
  const xs = staticShape(x, 'conv input');
  const ws = staticShape(w, 'conv weights');
  const cin = xs[1]! / group;
  const cout = ws[0]! / group;
  const attrs = { ...node.attributes };
  delete attrs.group;
  const dxs: Value[] = [];
  const dws: Value[] = [];
  for (let i = 0; i < group; i++) {
    const xi = op.slice(g, x, [i * cin], [(i + 1) * cin], [1]);
    const wi = op.slice(g, w, [i * cout], [(i + 1) * cout], [0]);
    const dyi = op.slice(g, dy, [i * cout], [(i + 1) * cout], [1]);
    const fake: GraphNode = { ...node, inputs: [xi, wi, null], attributes: attrs };
    const [dx, dw] = convGrad(g, fake, dyi);
    dxs.push(dx!);
    dws.push(dw!);
  }
  return [op.concat(g, dxs, 1), op.concat(g, dws, 0), b ? op.reduce(g, 'ReduceSum', dy, [0, 2, 3], false) : null];
}

/** Gradient of edge (replicate) padding: the centre, plus each border's gradient summed onto the edge pixel. */
function edgePadGrad(g: Graph, dy: Value, x: Value, pads: readonly number[]): Value {
  const xs = staticShape(x, 'padded input');
  const rank = xs.length;
  let grad = dy;
  for (let axis = 0; axis < rank; axis++) {
    const before = pads[axis]!;
    const after = pads[axis + rank]!;
    if (before === 0 && after === 0) continue;
    const len = xs[axis]!;
    const shape = staticShape(grad, 'pad gradient');
    let centre = op.slice(g, grad, [before], [before + len], [axis]);
    const addAt = (part: Value, index: number) => {
      const summed = op.reduce(g, 'ReduceSum', part, [axis], true);
      const padSpec = new Array(2 * rank).fill(0);
      padSpec[axis] = index;
      padSpec[axis + rank] = len - 1 - index;
      const placed = g.op('Pad', [summed, op.ints(g, padSpec, 'pads')], { mode: attr.string('constant') }, { name: 'pad_grad_place' });
      centre = op.add(g, centre, placed);
    };
    if (before > 0) addAt(op.slice(g, grad, [0], [before], [axis]), 0);
    if (after > 0) addAt(op.slice(g, grad, [before + len], [shape[axis]!], [axis]), len - 1);
    grad = centre;
  }
  return grad;
}

function reduceGrad(g: Graph, node: GraphNode, dy: Value, mean: boolean): Value {
  const x = node.inputs[0]!;
  const xs = staticShape(x, 'reduced input');
  const rank = xs.length;
  const axes = (intsOf(node.attributes.axes) ?? (node.inputs[1] ? constValues(g, node.inputs[1], 'reduction axes') : xs.map((_, i) => i))).map((a) =>
    a < 0 ? a + rank : a,
  );
  const keepShape = xs.map((d, i) => (axes.includes(i) ? 1 : d));
  let grad = op.reshape(g, dy, keepShape);
  if (mean) grad = op.mul(g, grad, op.scalar(g, 1 / axes.reduce((p, a) => p * xs[a]!, 1), 'inv_count'));
  return op.expand(g, grad, op.ints(g, xs, 'shape'));
}

const RULES: Record<string, GradientRule> = {
  Identity: (_g, _n, [dy]) => [dy!],
  Add: (g, n, [dy]) => [unbroadcast(g, dy!, n.inputs[0]!), unbroadcast(g, dy!, n.inputs[1]!)],
  Sub: (g, n, [dy]) => [unbroadcast(g, dy!, n.inputs[0]!), unbroadcast(g, g.op('Neg', [dy!]), n.inputs[1]!)],
  Mul: (g, n, [dy]) => {
    const [a, b] = n.inputs as [Value, Value];
    return [unbroadcast(g, op.mul(g, dy!, b), a), unbroadcast(g, op.mul(g, dy!, a), b)];
  },
  Div: (g, n, [dy]) => {
    const [a, b] = n.inputs as [Value, Value];
    const y = n.outputs[0]!;
    const da = op.div(g, dy!, b);
    return [unbroadcast(g, da, a), unbroadcast(g, g.op('Neg', [op.mul(g, da, y)]), b)];
  },
  Neg: (g, _n, [dy]) => [g.op('Neg', [dy!])],
  Exp: (g, n, [dy]) => [op.mul(g, dy!, n.outputs[0]!)],
  Log: (g, n, [dy]) => [op.div(g, dy!, n.inputs[0]!)],
  Sqrt: (g, n, [dy]) => [op.div(g, dy!, op.mul(g, n.outputs[0]!, op.scalar(g, 2)))],
  Atan: (g, n, [dy]) => {
    const x = n.inputs[0]!;
    return [op.div(g, dy!, op.add(g, op.mul(g, x, x), op.scalar(g, 1, 'one')))];
  },
  Sigmoid: (g, n, [dy]) => {
    const y = n.outputs[0]!;
    return [op.mul(g, dy!, op.mul(g, y, op.sub(g, op.scalar(g, 1, 'one'), y)))];
  },
  Tanh: (g, n, [dy]) => {
    const y = n.outputs[0]!;
    return [op.mul(g, dy!, op.sub(g, op.scalar(g, 1, 'one'), op.mul(g, y, y)))];
  },
  Relu: (g, n, [dy]) => [where(g, greater(g, n.inputs[0]!, op.scalar(g, 0, 'zero')), dy!, op.scalar(g, 0, 'zero'))],
  LeakyRelu: (g, n, [dy]) => {
    const alpha = floatOf(n.attributes.alpha, 0.01);
    return [where(g, greater(g, n.inputs[0]!, op.scalar(g, 0, 'zero')), dy!, op.mul(g, dy!, op.scalar(g, alpha, 'alpha')))];
  },
  Clip: (g, n, [dy]) => {
    const [x, lo, hi] = n.inputs;
    let grad = dy!;
    if (lo) grad = where(g, less(g, x!, lo), op.scalar(g, 0, 'zero'), grad);
    if (hi) grad = where(g, greater(g, x!, hi), op.scalar(g, 0, 'zero'), grad);
    return [grad, null, null];
  },
  Where: (g, n, [dy]) => {
    const [cond, a, b] = n.inputs as [Value, Value, Value];
    const zero = op.scalar(g, 0, 'zero');
    return [null, unbroadcast(g, where(g, cond, dy!, zero), a), unbroadcast(g, where(g, cond, zero, dy!), b)];
  },
  Concat: (g, n, [dy]) => {
    const rank = staticShape(n.outputs[0]!, 'concat output').length;
    const axis = (intOf(n.attributes.axis, 0) + rank) % rank;
    const sizes = n.inputs.map((v) => staticShape(v!, 'concat input')[axis]!);
    return op.split(g, dy!, axis, sizes, 'concat_grad');
  },
  Split: (g, n, dys) => {
    const parts = n.outputs.map((o, i) => dys[i] ?? zerosLike(g, o));
    const rank = staticShape(n.inputs[0]!, 'split input').length;
    return [op.concat(g, parts, (intOf(n.attributes.axis, 0) + rank) % rank, 'split_grad'), null];
  },
  Slice: (g, n, [dy]) => {
    const x = n.inputs[0]!;
    const xs = staticShape(x, 'sliced input');
    const starts = constValues(g, n.inputs[1], 'slice starts');
    const ends = constValues(g, n.inputs[2], 'slice ends');
    const axes = n.inputs[3] ? constValues(g, n.inputs[3], 'slice axes') : starts.map((_, i) => i);
    const pads = new Array(2 * xs.length).fill(0);
    axes.forEach((a0, j) => {
      const a = a0 < 0 ? a0 + xs.length : a0;
      const clamp = (v: number) => Math.min(Math.max(v < 0 ? v + xs[a]! : v, 0), xs[a]!);
      pads[a] = clamp(starts[j]!);
      pads[a + xs.length] = xs[a]! - clamp(ends[j]!);
    });
    return [g.op('Pad', [dy!, op.ints(g, pads, 'pads')], { mode: attr.string('constant') }, { name: 'slice_grad' }), null, null, null, null];
  },
  Gather: (g, n, [dy]) => {
    const [x, idx] = n.inputs as [Value, Value];
    const axis = intOf(n.attributes.axis, 0);
    const perm = constValues(g, idx, 'gather indices (only permutations are differentiable)');
    const size = staticShape(x, 'gathered input')[axis];
    const inverse = new Array<number>(perm.length);
    perm.forEach((src, dst) => (inverse[src] = dst));
    if (perm.length !== size || inverse.some((v) => v === undefined)) {
      throw new GraphError('gradient of Gather is implemented for permutations only');
    }
    return [op.gather(g, dy!, g.initializer('inverse_perm', i64([perm.length], inverse)), axis, 'gather_grad'), null];
  },
  ReduceSum: (g, n, [dy]) => [reduceGrad(g, n, dy!, false), null],
  ReduceMean: (g, n, [dy]) => [reduceGrad(g, n, dy!, true), null],
  ReduceMax: (g, n, [dy]) => {
    // The gradient flows to every element equal to the maximum (ties share it).
    const x = n.inputs[0]!;
    const spread = reduceGrad(g, n, dy!, false);
    const maxSpread = reduceGrad(g, n, n.outputs[0]!, false);
    const isMax = g.op('Equal', [x, maxSpread], {}, { name: 'is_max', dtypes: ['bool'] });
    return [where(g, isMax, spread, op.scalar(g, 0, 'zero')), null];
  },
  Reshape: (g, n, [dy]) => [op.reshape(g, dy!, staticShape(n.inputs[0]!, 'reshaped input')), null],
  Squeeze: (g, n, [dy]) => [op.reshape(g, dy!, staticShape(n.inputs[0]!, 'squeezed input')), null],
  Unsqueeze: (g, n, [dy]) => [op.reshape(g, dy!, staticShape(n.inputs[0]!, 'unsqueezed input')), null],
  Expand: (g, n, [dy]) => [unbroadcast(g, dy!, n.inputs[0]!), null],
  Transpose: (g, n, [dy]) => {
    const perm = intsOf(n.attributes.perm)!;
    const inverse = new Array<number>(perm.length);
    perm.forEach((p, i) => (inverse[p] = i));
    return [op.transpose(g, dy!, inverse)];
  },
  MatMul: (g, n, [dy]) => {
    const [a, b] = n.inputs as [Value, Value];
    const swapLast = (v: Value) => {
      const r = staticShape(v, 'matmul operand').length;
      return op.transpose(g, v, [...Array.from({ length: r - 2 }, (_, i) => i), r - 1, r - 2]);
    };
    return [unbroadcast(g, op.matmul(g, dy!, swapLast(b)), a), unbroadcast(g, op.matmul(g, swapLast(a), dy!), b)];
  },
  Pad: (g, n, [dy]) => {
    const x = n.inputs[0]!;
    const pads = constValues(g, n.inputs[1], 'pads');
    const mode = n.attributes.mode?.kind === 'string' ? n.attributes.mode.value : 'constant';
    if (mode === 'edge') return [edgePadGrad(g, dy!, x, pads), null, null];
    if (mode !== 'constant') throw new GraphError(`gradient of Pad mode ${mode} is not implemented`);
    const xs = staticShape(x, 'padded input');
    const axes = xs.map((_, i) => i);
    return [op.slice(g, dy!, axes.map((a) => pads[a]!), axes.map((a) => pads[a]! + xs[a]!), axes), null, null];
  },
  Conv: (g, n, [dy], wants) => convGrad(g, n, dy!, wants),
  Cast: (_g, _n, [dy]) => [dy!],
};

export function gradientRuleFor(opType: string): GradientRule | undefined {
  return RULES[opType];
}

/** Nodes on a path from one of `wrt` to `loss`, and the values that depend on `wrt`. */
function activeNodes(g: Graph, loss: Value, wrt: readonly Value[]): { active: Set<GraphNode>; dependsOnWrt: Set<Value> } {
  const dependsOnWrt = new Set<Value>(wrt);
  const forward = new Set<GraphNode>();
  for (const node of g.nodes) {
    if (node.inputs.some((v) => v && dependsOnWrt.has(v))) {
      forward.add(node);
      node.outputs.forEach((o) => dependsOnWrt.add(o));
    }
  }
  const needed = new Set<Value>([loss]);
  const active = new Set<GraphNode>();
  for (let i = g.nodes.length - 1; i >= 0; i--) {
    const node = g.nodes[i]!;
    if (!forward.has(node) || !node.outputs.some((o) => needed.has(o))) continue;
    active.add(node);
    node.inputs.forEach((v) => v && needed.add(v));
  }
  return { active, dependsOnWrt };
}

/**
 * Appends to `g` the gradients of scalar `loss` with respect to each of `wrt` (same shapes).
 * Values that do not influence the loss get a zero gradient.
 */
export function gradients(g: Graph, loss: Value, wrt: readonly Value[]): Value[] {
  const lossShape = staticShape(loss, 'the loss');
  if (lossShape.reduce((a, b) => a * b, 1) !== 1) throw new GraphError(`the loss must be a scalar, got shape [${lossShape}]`);
  const grads = new Map<Value, Value>();
  const accumulate = (v: Value, d: Value) => {
    const prev = grads.get(v);
    grads.set(v, prev ? op.add(g, prev, d, 'grad_sum') : d);
  };
  grads.set(loss, g.initializer('loss_seed', f32(lossShape, [1])));
  const { active, dependsOnWrt: influenced } = activeNodes(g, loss, wrt);

  const nodes = g.nodes.filter((n) => active.has(n));
  for (let i = nodes.length - 1; i >= 0; i--) {
    const node = nodes[i]!;
    const outGrads = node.outputs.map((o) => grads.get(o) ?? null);
    if (outGrads.every((d) => d === null)) continue;
    const rule = RULES[node.opType];
    if (!rule) throw new GraphError(`no gradient rule for operator ${node.opType} (node ${node.name})`);
    const wants = node.inputs.map((v) => !!v && influenced.has(v));
    const inGrads = rule(g, node, outGrads, wants);
    node.inputs.forEach((v, j) => {
      const d = inGrads[j];
      if (v && d && v.dtype === 'float32') accumulate(v, d);
    });
  }
  return wrt.map((v) => grads.get(v) ?? zerosLike(g, v));
}

/** Shape helper for callers building losses: the static dims of a value. */
export function dimsOf(v: Value): readonly Dim[] {
  return v.shape ?? [];
}
