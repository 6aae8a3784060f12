/**
 * Fast convolutions for inference on CPU: Winograd minimal filtering F(m×m, r×r) written as plain ONNX
 * ops (MatMul, Transpose, Reshape), so every execution provider runs it and ONNX Runtime's SGEMM does the work.
 *
 * A k×k convolution with stride 1 over an h×w map costs h·w·k² multiplies per (input, output) channel
 * pair; Winograd F(m, r) computes each m×m output tile from an α×α input tile (α = m + r − 1) with α²
 * multiplies, i.e. (α/m)² per output instead of r²: F(4, 3) 2.25 instead of 9 (4× fewer), F(6, 3) 1.78
 * (5.1×), F(4, 5) 4 instead of 25 (6.25×).
 *
 *   Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A      per tile, summed over input channels
 *
 * Layout. The convolution works on "HWNC" tensors [h, w, N, C]: channels innermost (so every reshuffle of
 * the spatial axes moves whole channel vectors) and the spatial axes outermost (so each spatial transform
 * is one matrix product over a 2-D view). The steps for an input x [h, w, N, Cin]:
 *   1. rows:    Th [α·tH, h] · x[h, w·N·Cin]               tile extraction + padding + Bᵀ along h, in one matrix
 *   2. columns: Tw [α·tW, w] · (…)[α·tH][w, N·Cin]          the same along w
 *   3. transpose [αh, tH, αw, tW, N·Cin] → [αh, αw, tH·tW·N, Cin]
 *   4. α² products [tH·tW·N, Cin] × U[αh, αw] [Cin, Cout]   (U = G g Gᵀ: the weights transformed once;
 *      ONNX Runtime folds that sub-graph at load time, so bundles keep the ordinary weights)
 *   5. Aᵀ along αh, then along αw (per tile, K = α)
 *   6. transpose [m, m, tH, tW, N·Cout] → [tH·m, tW·m, N, Cout], crop, + bias
 * Padding (zero for the student, edge/replicate for the teacher) and odd sizes are folded into Th and
 * Tw, so no Pad node is needed; tiles that run past the output are computed and cropped. NCHW ↔ HWNC is
 * one 2-D transpose (`toHWNC`, `fromHWNC`); networks stay channels-last between their convs.
 *
 * Accuracy (max |Winograd − Conv| / max |Conv|, float32, measured): F(4, 3) with the points
 * {0, ±3/4, ±3/2} ~2–3e-6 over 1024 channels (the usual {0, ±1, ±2}: ~1e-5); F(6, 3) ~1.5e-5;
 * F(4, 5) ~8e-6; whole paper-size student ~1.7e-6 (F(4, 3)) / ~9e-6 (F(6, 3)); teacher ~1.4e-6.
 * Cost: load time — ONNX Runtime folds U on one thread, ~0.4 s per 1024×1024 conv for F(4, 3).
 * On GPUs (cuDNN/TensorRT have their own Winograd and implicit-GEMM kernels) build with `direct`.
 */
import { Graph, Value } from '../onnx/graph.js';
import * as op from '../onnx/ops.js';
import { f32, type HostTensor } from '../onnx/tensor.js';

export type ConvAlgorithm = 'direct' | 'winograd';
export type SpatialPadding = 'zero' | 'edge';

/** Process-wide defaults for builders whose caller passes no option (benchmarks, A/B checks, operators). */
export interface FastConvDefaults {
  algorithm: ConvAlgorithm | 'auto';
  /** Output tile of the student's F(m×m, 3×3): 4 is best at batch 1 and on 32×32 maps; 6 wins ~10–15 % at batch 8 on 24×24. */
  studentTile: number;
  /** Output tiles of the teacher's subnets (hidden 64: few, small GEMMs, so larger tiles pay). */
  teacherTileK3: number;
  teacherTileK5: number;
}

const DEFAULTS: FastConvDefaults = { algorithm: 'auto', studentTile: 4, teacherTileK3: 6, teacherTileK5: 4 };
let current: FastConvDefaults = { ...DEFAULTS };

/** Changes the process-wide defaults (unset fields return to the built-in ones). */
export function setFastConvDefaults(d: Partial<FastConvDefaults>): void {
  current = { ...DEFAULTS, ...d };
}

export function fastConvDefaults(): Readonly<FastConvDefaults> {
  return current;
}

/**
 * The algorithm builders use when their caller passes none (`auto` unless changed): lets a benchmark
 * or an A/B check build the unchanged graph builders (head, fused detector) both ways.
 */
export function setDefaultConvAlgorithm(a: ConvAlgorithm | 'auto'): void {
  current = { ...current, algorithm: a };
}

export function defaultConvAlgorithm(): ConvAlgorithm | 'auto' {
  return current.algorithm;
}

/** Winograd F(m, r) in one dimension: y = Aᵀ[(G g) ⊙ (Bᵀ d)] for the correlation y_i = Σ_k d_{i+k} g_k. */
export interface WinogradMatrices {
  m: number;
  r: number;
  alpha: number;
  /** The finite interpolation points (the last point is ∞). */
  points: number[];
  /** [m][α] */
  AT: number[][];
  /** [α][r] */
  G: number[][];
  /** [α][α] */
  BT: number[][];
}

/** Interpolation points in the usual order: small integers first, then their halves (Lavin & Gray). */
const POINTS = [0, 1, -1, 2, -2, 0.5, -0.5, 3, -3, 1 / 3, -1 / 3, 4, -4];

/**
 * Points per α. For α = 6 (F(4, 3), F(2, 5)), {0, ±3/4, ±3/2} measured 3–4× more accurate in float32 than
 * the usual {0, ±1, ±2} (max error ≈ 2.5e-6 instead of ≈ 1e-5 of the output range over 1024 channels);
 * every entry of Bᵀ and Aᵀ stays a short dyadic fraction, exact in float32.
 */
export function defaultPoints(alpha: number): readonly number[] {
  return alpha === 6 ? [0, 0.75, -0.75, 1.5, -1.5] : POINTS;
}

/** Coefficients (ascending powers) of Π (x − roots[i]). */
function polyFromRoots(roots: readonly number[]): number[] {
  let c = [1];
  for (const root of roots) {
    const next = new Array<number>(c.length + 1).fill(0);
    for (let i = 0; i < c.length; i++) {
      next[i + 1] += c[i]!;
      next[i] -= root * c[i]!;
    }
    c = next;
  }
  return c;
}

/**
 * Toom–Cook construction of F(m, r) with α − 1 finite points and the point at infinity.
 * Polynomial product s = h·g evaluated at the points and interpolated (s = C[(V_m h) ⊙ (V_r g)]);
 * correlation is its transpose: Aᵀ = V_mᵀ, G = V_r, Bᵀ = Cᵀ, then row j of Bᵀ is multiplied and row j of
 * G divided by the Lagrange denominator f_j, which leaves Bᵀ (applied to data at run time) with the
 * coefficients of Π_{l≠j}(x − p_l) (integers or short dyadic fractions for the points used here) and moves
 * every other fraction into G (applied to the weights once, in float64).
 */
export function winogradMatrices(m: number, r: number, pointSet?: readonly number[]): WinogradMatrices {
  const alpha = m + r - 1;
  pointSet ??= defaultPoints(alpha);
  if (m < 1 || r < 1 || alpha - 1 > pointSet.length) throw new Error(`no Winograd transform for F(${m}, ${r})`);
  const points = pointSet.slice(0, alpha - 1);
  const AT = Array.from({ length: m }, (_, i) => [...points.map((p) => p ** i), i === m - 1 ? 1 : 0]);
  const G: number[][] = [];
  const BT: number[][] = [];
  points.forEach((p, j) => {
    const others = points.filter((_, l) => l !== j);
    const f = others.reduce((acc, q) => acc * (p - q), 1);
    G.push(Array.from({ length: r }, (_, k) => p ** k / f));
    BT.push([...polyFromRoots(others), 0]);
  });
  G.push(Array.from({ length: r }, (_, k) => (k === r - 1 ? 1 : 0)));
  BT.push(polyFromRoots(points));
  return { m, r, alpha, points, AT, G, BT };
}

/** Default output tile per kernel size: F(4×4, 3×3) (4× fewer multiplies) and F(2×2, 5×5) (2.8×). */
export function defaultTile(kernel: number): number {
  return kernel === 3 ? 4 : kernel === 5 ? 2 : kernel === 1 ? 1 : 2;
}

export interface WinogradConvOptions {
  /** Input spatial size (static: the transforms are matrices over it). */
  height: number;
  width: number;
  /** Padding on every side; the default keeps the size ((k − 1) / 2). */
  pad?: number;
  padding: SpatialPadding;
  /** Output tile m of F(m×m, k×k) (default: `defaultTile(k)`). */
  tile?: number;
  /** Finite interpolation points (default: `defaultPoints(α)`). */
  points?: readonly number[];
  name?: string;
}

/** Source row of padded position p (or −1 when it reads a zero). */
function sourceIndex(p: number, size: number, padding: SpatialPadding): number {
  if (p >= 0 && p < size) return p;
  return padding === 'edge' ? Math.min(size - 1, Math.max(0, p)) : -1;
}

/**
 * Tile extraction, padding and Bᵀ along one axis as one matrix [α·tiles, size]; row a·tiles + t gives
 * the a-th transformed value of tile t. Tiles past the end read zeros (their outputs are cropped).
 */
export function inputAxisMatrix(w: WinogradMatrices, size: number, pad: number, padding: SpatialPadding, tiles: number): Float32Array {
  const { alpha, m, BT } = w;
  const out = new Float64Array(alpha * tiles * size);
  for (let a = 0; a < alpha; a++) {
    for (let t = 0; t < tiles; t++) {
      const row = (a * tiles + t) * size;
      for (let i = 0; i < alpha; i++) {
        const c = BT[a]![i]!;
        if (c === 0) continue;
        const p = t * m + i - pad;
        // positions beyond the padded input only feed cropped outputs; they read zero
        if (p >= size + pad) continue;
        const src = sourceIndex(p, size, padding);
        if (src >= 0) out[row + src] += c;
      }
    }
  }
  return Float32Array.from(out);
}

/** Row-major Float32Array of a [rows][cols] array. */
function flat(rows: number[][]): Float32Array {
  return Float32Array.from(rows.flat());
}

/**
 * Graph values for the transformed weights U [α², Cin, Cout] = G g Gᵀ. Weights given as a host tensor are
 * stored taps-first ([k², Cin·Cout], a pure permutation of the original values) and the product with
 * G ⊗ G is left in the graph, where ONNX Runtime folds it to a constant at load time: the model file stays
 * the size of the ordinary weights (Winograd weights are (α/k)² times larger: 4× for F(4, 3)).
 * Weights given as graph values (training graphs) are transposed in the graph.
 */
export function transformWeights(g: Graph, weight: Value | HostTensor<'float32'>, w: WinogradMatrices, name: string): Value {
  const { alpha, r } = w;
  const [cout, cin] = weightDims(weight);
  // U[(a, b)] = Σ_{k,l} G[a][k]·G[b][l]·g[k][l]: the Kronecker matrix G ⊗ G [α², r²] times [r², Cin·Cout]
  const kron = new Float32Array(alpha * alpha * r * r);
  for (let a = 0; a < alpha; a++)
    for (let b = 0; b < alpha; b++)
      for (let k = 0; k < r; k++) for (let l = 0; l < r; l++) kron[(a * alpha + b) * r * r + k * r + l] = w.G[a]![k]! * w.G[b]![l]!;
  let taps: Value;
  if (weight instanceof Value) {
    taps = op.reshape(g, op.transpose(g, weight, [2, 3, 1, 0]), [r * r, cin * cout]);
  } else {
    const src = weight.data;
    const dst = new Float32Array(src.length);
    const rr = r * r;
    for (let o = 0; o < cout; o++)
      for (let i = 0; i < cin; i++) for (let t = 0; t < rr; t++) dst[t * cin * cout + i * cout + o] = src[(o * cin + i) * rr + t]!;
    taps = g.initializer(`${name}_taps`, f32([rr, cin * cout], dst));
  }
  const u = op.matmul(g, g.initializer(`${name}_GxG`, f32([alpha * alpha, r * r], kron)), taps);
  return op.reshape(g, u, [alpha * alpha, cin, cout]);
}

/** [Cout, Cin, k, k] of a weight value (initializers and graph inputs carry static shapes). */
export function weightDims(weight: Value | HostTensor): [number, number, number, number] {
  const d = weight instanceof Value ? weight.shape : weight.dims;
  if (!d || d.length !== 4 || d.some((v) => typeof v !== 'number')) throw new Error('a conv weight needs a static [Cout, Cin, k, k] shape');
  return d as [number, number, number, number];
}

export interface WinogradPlan {
  w: WinogradMatrices;
  tilesH: number;
  tilesW: number;
  outHeight: number;
  outWidth: number;
}

export function planWinograd(kernel: number, o: WinogradConvOptions): WinogradPlan {
  const m = o.tile ?? defaultTile(kernel);
  const w = winogradMatrices(m, kernel, o.points);
  const pad = o.pad ?? (kernel - 1) / 2;
  const outHeight = o.height + 2 * pad - kernel + 1;
  const outWidth = o.width + 2 * pad - kernel + 1;
  if (outHeight < 1 || outWidth < 1) throw new Error(`a ${kernel}×${kernel} conv does not fit a ${o.height}×${o.width} map`);
  return { w, tilesH: Math.ceil(outHeight / m), tilesW: Math.ceil(outWidth / m), outHeight, outWidth };
}

/**
 * Winograd convolution (stride 1, no dilation, no groups) on an HWNC tensor x [h, w, N, Cin];
 * `weight` is [Cout, Cin, k, k] as for ONNX Conv, `bias` [Cout]. Returns [h', w', N, Cout].
 */
export function winogradConvHWNC(
  g: Graph,
  x: Value,
  weight: Value | HostTensor<'float32'>,
  bias: Value | null,
  o: WinogradConvOptions,
): Value {
  const name = o.name ?? 'winograd';
  const [cout, cin, kernel, kw] = weightDims(weight);
  if (kernel !== kw) throw new Error(`winograd needs a square kernel, got ${kernel}×${kw}`);
  const plan = planWinograd(kernel, o);
  const { w, tilesH, tilesW, outHeight, outWidth } = plan;
  const { alpha, m } = w;
  const pad = o.pad ?? (kernel - 1) / 2;
  const th = g.initializer(`${name}_Th`, f32([alpha * tilesH, o.height], inputAxisMatrix(w, o.height, pad, o.padding, tilesH)));
  const tw = g.initializer(`${name}_Tw`, f32([alpha * tilesW, o.width], inputAxisMatrix(w, o.width, pad, o.padding, tilesW)));
  // 1. rows: [αh·tH, w·N·Cin]
  const rows = op.matmul(g, th, op.reshape(g, x, [o.height, -1]));
  // 2. columns: [αh·tH, αw·tW, N·Cin]
  const cols = op.matmul(g, tw, op.reshape(g, rows, [alpha * tilesH, o.width, -1]));
  // 3. [αh, tH, αw, tW, N·Cin] → [αh, αw, tH, tW, N·Cin] (moves blocks of N·Cin floats)
  const v = op.transpose(g, op.reshape(g, cols, [alpha, tilesH, alpha, tilesW, -1]), [0, 2, 1, 3, 4]);
  const vs = op.reshape(g, v, [alpha * alpha, -1, cin]);
  const u = transformWeights(g, weight, w, name);
  // 4. α² channel products [tiles·N, Cin] × [Cin, Cout]
  const mm = op.matmul(g, vs, u);
  // 5. Aᵀ along αh then αw: [α, rest] → [m, rest]; [m, α, rest] → [m, m, rest]
  const at = g.initializer(`${name}_AT`, f32([m, alpha], flat(w.AT)));
  const outH = op.matmul(g, at, op.reshape(g, mm, [alpha, -1]));
  const outW = op.matmul(g, at, op.reshape(g, outH, [m, alpha, -1]));
  // 6. [m, m, tH, tW, N·Cout] → [tH, m, tW, m, N·Cout] → [tH·m, tW·m, N, Cout]
  let y = op.reshape(g, op.transpose(g, op.reshape(g, outW, [m, m, tilesH, tilesW, -1]), [2, 0, 3, 1, 4]), [tilesH * m, tilesW * m, -1, cout]);
  if (tilesH * m !== outHeight || tilesW * m !== outWidth) y = op.slice(g, y, [0, 0], [outHeight, outWidth], [0, 1]);
  return bias ? op.add(g, y, bias) : y;
}

export interface ChwDims {
  channels: number;
  height: number;
  width: number;
}

function chwOf(x: Value, layout: 'nchw' | 'hwnc', given?: Partial<ChwDims>): ChwDims {
  const s = x.shape;
  const at = (i: number) => (s && typeof s[i] === 'number' ? (s[i] as number) : undefined);
  const dims =
    layout === 'nchw'
      ? { channels: given?.channels ?? at(1), height: given?.height ?? at(2), width: given?.width ?? at(3) }
      : { channels: given?.channels ?? at(3), height: given?.height ?? at(0), width: given?.width ?? at(1) };
  if (dims.channels === undefined || dims.height === undefined || dims.width === undefined) {
    throw new Error(`layout change of ${x.name} needs static channels and map size`);
  }
  return dims as ChwDims;
}

/**
 * NCHW [N, C, h, w] → HWNC [h, w, N, C]. Written as a 2-D transpose [N·C, h·w] → [h·w, N·C] between
 * reshapes: ONNX Runtime moves a single axis with a blocked kernel, while the equivalent 4-D permutation
 * [2, 3, 0, 1] takes its generic element-wise path (measured ~10× slower on [8, 304, 24, 24]).
 */
export function toHWNC(g: Graph, x: Value, dims?: Partial<ChwDims>): Value {
  const { channels, height, width } = chwOf(x, 'nchw', dims);
  const flat = op.reshape(g, x, [-1, height * width]);
  return op.reshape(g, op.transpose(g, flat, [1, 0]), [height, width, -1, channels]);
}

/** HWNC [h, w, N, C] → NCHW [N, C, h, w] (a 2-D transpose, see `toHWNC`). */
export function fromHWNC(g: Graph, x: Value, dims?: Partial<ChwDims>): Value {
  const { channels, height, width } = chwOf(x, 'hwnc', dims);
  const flat = op.reshape(g, x, [height * width, -1]);
  return op.reshape(g, op.transpose(g, flat, [1, 0]), [-1, channels, height, width]);
}

/** Winograd convolution on NCHW tensors (a drop-in for Conv with same-size padding, e.g. for tests). */
export function winogradConv2d(
  g: Graph,
  x: Value,
  weight: Value | HostTensor<'float32'>,
  bias: Value | null,
  o: WinogradConvOptions,
): Value {
  const [cout, cin] = weightDims(weight);
  const y = winogradConvHWNC(g, toHWNC(g, x, { channels: cin, height: o.height, width: o.width }), weight, bias, o);
  const plan = planWinograd(weightDims(weight)[2], o);
  return fromHWNC(g, y, { channels: cout, height: plan.outHeight, width: plan.outWidth });
}

/** Ops that keep the last two (spatial) axes of an NCHW tensor as they are. */
const SPATIAL_PRESERVING = new Set(['Concat', 'Expand', 'Identity', 'Add', 'Sub', 'Mul', 'Div', 'Relu', 'LeakyRelu', 'Clip', 'Gather', 'Split', 'Exp', 'Atan', 'Cast']);

/**
 * The static spatial size [h, w] of an NCHW value, found by walking up through ops that keep it
 * (concat, broadcast, element-wise) to a graph input or initializer with a static shape — e.g. the
 * positional encoding the head expands over the batch. Undefined when nothing says.
 */
export function inferSpatialSize(g: Graph, v: Value, depth = 0): { height: number; width: number } | undefined {
  const fromShape = (s: readonly (number | string)[] | undefined) =>
    s && s.length === 4 && typeof s[2] === 'number' && typeof s[3] === 'number' ? { height: s[2], width: s[3] } : undefined;
  const direct = fromShape(v.shape) ?? fromShape(g.initializerOf(v)?.dims);
  if (direct || depth > 16 || !v.producer || !SPATIAL_PRESERVING.has(v.producer.opType)) return direct;
  for (const input of v.producer.inputs) {
    if (!input) continue;
    if (v.producer.opType === 'Expand' && input !== v.producer.inputs[0]) continue;
    const found = inferSpatialSize(g, input, depth + 1);
    if (found) return found;
  }
  return undefined;
}

/**
 * A direct convolution on HWNC tensors (ONNX Conv between two transposes), for convs where Winograd
 * does not pay off inside an otherwise channels-last chain.
 */
export function directConvHWNC(
  g: Graph,
  x: Value,
  weight: Value,
  bias: Value | null,
  padding: SpatialPadding,
  pad: number,
  size: { height: number; width: number },
): Value {
  const [cout, cin, k] = weightDims(weight);
  const nchw = fromHWNC(g, x, { channels: cin, ...size });
  const y =
    padding === 'zero'
      ? op.conv(g, nchw, weight, null, { pads: [pad, pad, pad, pad] })
      : op.conv(g, op.padSpatial(g, nchw, pad, 'edge'), weight, null);
  const out = toHWNC(g, y, { channels: cout, height: size.height + 2 * pad - k + 1, width: size.width + 2 * pad - k + 1 });
  return bias ? op.add(g, out, bias) : out;
}

/** The conv choice for one layer, when a builder is asked for `auto` or given a per-conv rule. */
export interface ConvSite {
  /** Weight key (e.g. `res.0.l1_bn1`, `module_list.3.s2.conv1`). */
  key: string;
  cin: number;
  cout: number;
  kernel: number;
}

export type ConvAlgorithmOption = ConvAlgorithm | 'auto' | ((site: ConvSite) => ConvAlgorithm);

/**
 * `auto`: Winograd for 3×3 and 5×5 convs with enough channels for the channel products to dominate the
 * transforms (Cin·Cout ≥ 64², both ≥ 32: every conv of the paper and edge presets), direct otherwise
 * (tiny test networks keep plain Conv).
 */
export function autoConvAlgorithm(site: ConvSite): ConvAlgorithm {
  if (site.kernel !== 3 && site.kernel !== 5) return 'direct';
  return site.cin * site.cout >= 64 * 64 && Math.min(site.cin, site.cout) >= 32 ? 'winograd' : 'direct';
}

export function resolveConvAlgorithm(option: ConvAlgorithmOption, site: ConvSite): ConvAlgorithm {
  if (typeof option === 'function') return option(site);
  return option === 'auto' ? autoConvAlgorithm(site) : option;
}

/**
 * The constant [D, h, w] behind a value that is an initializer [1, D, h, w] or such an initializer
 * expanded over the batch (how the head feeds the positional encoding); undefined otherwise.
 */
export function constantMap(g: Graph, v: Value): HostTensor<'float32'> | undefined {
  const direct = g.initializerOf(v);
  const source = direct ?? (v.producer?.opType === 'Expand' && v.producer.inputs[0] ? g.initializerOf(v.producer.inputs[0]) : undefined);
  if (!source || source.dtype !== 'float32' || source.dims.length !== 4 || source.dims[0] !== 1) return undefined;
  return { dtype: 'float32', dims: source.dims.slice(1), data: source.data as Float32Array };
}

/**
 * conv(P, w) + b for a constant map P [D, h, w] (float64 accumulation), as an HWNC tensor [h, w, 1, Cout]:
 * the share of a convolution that a constant input contributes, computed once at build time.
 * `weight` is [Cout, Cin, k, k]; the constant fills input channels [channelOffset, channelOffset + D).
 */
export function constantConvMap(
  map: HostTensor<'float32'>,
  weight: HostTensor<'float32'>,
  bias: HostTensor<'float32'>,
  channelOffset: number,
  padding: SpatialPadding,
  pad: number,
): HostTensor<'float32'> {
  const [d, h, w] = map.dims as [number, number, number];
  const [cout, cin, k] = weight.dims as [number, number, number, number];
  const outH = h + 2 * pad - k + 1;
  const outW = w + 2 * pad - k + 1;
  const out = new Float64Array(outH * outW * cout);
  for (let o = 0; o < cout; o++) {
    for (let c = 0; c < d; c++) {
      for (let ky = 0; ky < k; ky++) {
        for (let kx = 0; kx < k; kx++) {
          const wv = weight.data[((o * cin + channelOffset + c) * k + ky) * k + kx]!;
          if (wv === 0) continue;
          for (let y = 0; y < outH; y++) {
            const sy = sourceIndex(y + ky - pad, h, padding);
            if (sy < 0) continue;
            for (let x = 0; x < outW; x++) {
              const sx = sourceIndex(x + kx - pad, w, padding);
              if (sx < 0) continue;
              out[(y * outW + x) * cout + o] += wv * map.data[(c * h + sy) * w + sx]!;
            }
          }
        }
      }
    }
  }
  for (let i = 0; i < out.length; i++) out[i] += bias.data[i % cout]!;
  return f32([outH, outW, 1, cout], out);
}

/** Input channels [from, to) of a conv weight [Cout, Cin, k, k], on the host. */
export function sliceInputChannels(weight: HostTensor<'float32'>, from: number, to: number): HostTensor<'float32'> {
  const [cout, cin, k] = weight.dims as [number, number, number, number];
  const kk = k * k;
  const out = new Float32Array(cout * (to - from) * kk);
  for (let o = 0; o < cout; o++) out.set(weight.data.subarray((o * cin + from) * kk, (o * cin + to) * kk), o * (to - from) * kk);
  return f32([cout, to - from, k, k], out);
}

/** Keys cubic convolution weight (a = −0.75 as PyTorch's and ONNX Runtime's bicubic). */
function cubicWeight(x: number, a = -0.75): number {
  const t = Math.abs(x);
  if (t <= 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
  if (t < 2) return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a;
  return 0;
}

/**
 * [out, in] matrix of bicubic resampling along one axis (half-pixel centres, taps clamped to the edge:
 * PyTorch `bicubic` with align_corners=False, ONNX Resize cubic with half_pixel), followed by a Gaussian
 * blur with reflect padding when `taps` is given (float64, rounded once).
 */
export function resampleMatrix(inSize: number, outSize: number, taps?: Float32Array): Float32Array {
  const m = new Float64Array(outSize * inSize);
  const scale = inSize / outSize;
  for (let o = 0; o < outSize; o++) {
    const src = (o + 0.5) * scale - 0.5;
    const f = Math.floor(src);
    const t = src - f;
    for (let k = -1; k <= 2; k++) {
      const i = Math.min(inSize - 1, Math.max(0, f + k));
      m[o * inSize + i] += cubicWeight(k - t);
    }
  }
  if (!taps) return Float32Array.from(m);
  const r = (taps.length - 1) / 2;
  const reflect = (p: number) => (p < 0 ? -p : p >= outSize ? 2 * (outSize - 1) - p : p);
  const out = new Float64Array(outSize * inSize);
  for (let o = 0; o < outSize; o++) {
    for (let j = -r; j <= r; j++) {
      const row = reflect(o + j) * inSize;
      const c = taps[j + r]!;
      for (let i = 0; i < inSize; i++) out[o * inSize + i] += c * m[row + i]!;
    }
  }
  return Float32Array.from(out);
}

/**
 * The display map: [N, 1, h, w] → [N, 1, H, W], bicubic upsampling then (σ > 0) separable Gaussian
 * smoothing with reflect borders — the same linear map as `buildUpsampledMap` in anomaly-map.ts, but as
 * two small products Mh · map · Mwᵀ with both steps folded into constant matrices. On the 2-core CPU,
 * 32² → 256² at batch 8: ~1–2 ms instead of ~80 ms (ONNX Runtime's cubic Resize is scalar code).
 */
export function buildUpsampledMapMatMul(
  g: Graph,
  map: Value,
  size: { height: number; width: number },
  out: { height: number; width: number },
  taps?: Float32Array,
): Value {
  const mh = g.initializer('upsample_rows', f32([out.height, size.height], resampleMatrix(size.height, out.height, taps)));
  const mwT = resampleMatrix(size.width, out.width, taps);
  const t = new Float32Array(mwT.length);
  for (let o = 0; o < out.width; o++) for (let i = 0; i < size.width; i++) t[i * out.width + o] = mwT[o * size.width + i]!;
  const mw = g.initializer('upsample_cols', f32([size.width, out.width], t));
  return op.matmul(g, mh, op.matmul(g, map, mw));
}
