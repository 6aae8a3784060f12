/**
 * The default backbone: MobileNetV2 (α = 1.4) rebuilt as an ONNX feature extractor from the TF.js graph
 * model that the npm package `nsfwjs` carries (`dist/models/mobilenet_v2_mid`).
 *
 * That network is TF-Hub's ImageNet-pretrained MobileNetV2 1.4, fine-tuned by the nsfwjs authors on their
 * five NSFW classes, exported with batch norm folded into the convolutions and weights uint8-quantized.
 * We cut it at one or more intermediate nodes (default `expanded_conv_6/expand/Relu6`: 288 channels,
 * stride 8) and emit plain ONNX: Conv (grouped for depthwise), Clip(0, 6) for ReLU6, Add for the residuals,
 * and the graph's own input scaling (x·2 − 1). See docs/backbone.md.
 *
 * ONNX model contract:
 *   input  `image`  float32 [N, 3, H, W], RGB, values in [0, 1] (no mean/std to subtract; the graph scales
 *                   to [−1, 1] itself); N, H, W are dynamic (any H, W ≥ 1; TF 'SAME' padding semantics).
 *   outputs one per cut layer, float32 [N, C, ceil(H/s), ceil(W/s)] for that layer's channels C, stride s.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile, rename, mkdir, rm, stat } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Graph, type Value, attr, type Attribute } from '../../onnx/graph.js';
import * as op from '../../onnx/ops.js';
import { encodeModel } from '../../onnx/serialize.js';
import { f32, type HostTensor } from '../../onnx/tensor.js';
import {
  attrInts,
  attrString,
  attrStrings,
  dataInputs,
  loadTfjsGraphModel,
  type TfjsGraphModel,
  type TfjsNodeDef,
} from './tfjs-graph.js';

/** Bump when the generated ONNX changes for the same inputs (invalidates cached files). */
export const BACKBONE_GENERATOR_VERSION = 1;

export const DEFAULT_BACKBONE_LAYERS: readonly string[] = ['expanded_conv_6/expand/Relu6'];

/** Layers with short, stable output names (any other node of the graph may be asked for too). */
export const NAMED_LAYERS: readonly { layer: string; output: string; channels: number; stride: number }[] = [
  { layer: 'expanded_conv_6/expand/Relu6', output: 'feat_s8', channels: 288, stride: 8 },
  { layer: 'expanded_conv_13/expand/Relu6', output: 'feat_s16', channels: 816, stride: 16 },
];

export interface BackboneInputSpec {
  name: 'image';
  layout: 'NCHW';
  /** Channel order of the 3 input channels. */
  channels: 'RGB';
  /** Value range the model expects. */
  range: [0, 1];
  /** Per-channel mean/std to apply before feeding: identity, because the graph scales [0,1] → [−1,1] itself. */
  mean: number[];
  std: number[];
  /** The size the network was trained at; any H, W work. */
  nativeSize: [224, 224];
}

export interface BackboneOutputSpec {
  /** ONNX output name. */
  name: string;
  /** Layer as asked for (short name, e.g. `expanded_conv_6/expand/Relu6`). */
  layer: string;
  /** Full TF node name in the source graph. */
  node: string;
  channels: number;
  stride: number;
}

export interface BackboneDescriptor {
  format: 'ast-edge-backbone/1';
  family: 'mobilenetv2-1.4-nsfwjs';
  input: BackboneInputSpec;
  outputs: BackboneOutputSpec[];
  /** Where the weights came from (package, version, folder). */
  source: string;
  generatorVersion: number;
}

export interface BuiltBackbone extends BackboneDescriptor {
  /** ONNX ModelProto bytes. */
  model: Uint8Array;
}

export interface CachedBackbone extends BackboneDescriptor {
  /** The .onnx file. */
  file: string;
  /** The .json descriptor next to it. */
  descriptorFile: string;
  sha256: string;
  /** true when existing files were reused. */
  cached: boolean;
}

export class BackboneError extends Error {
  constructor(
    message: string,
    /** The layer (or TF node) involved, when one is. */
    readonly layer?: string,
  ) {
    super(message);
    this.name = 'BackboneError';
  }
}

// ---- locating the source model ---------------------------------------------------------------------------

export interface NsfwjsModelLocation {
  dir: string;
  version: string;
}

/** Finds `nsfwjs/dist/models/mobilenet_v2_mid` through Node's module resolution from this file. */
export function locateNsfwjsMobileNetV2(): NsfwjsModelLocation {
  let entry: string;
  try {
    entry = createRequire(import.meta.url).resolve('nsfwjs');
  } catch (err) {
    throw new BackboneError(
      `the npm package "nsfwjs" (which carries the MobileNetV2 weights) is not installed: ${(err as Error).message}. ` +
        'Install it, or generate the backbone on a machine that has it and copy models/cache/.',
    );
  }
  let dir = path.dirname(entry);
  for (;;) {
    const pkgFile = path.join(dir, 'package.json');
    if (existsSync(pkgFile)) {
      const pkg = JSON.parse(readFileSync(pkgFile, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'nsfwjs') {
        const modelDir = path.join(dir, 'dist', 'models', 'mobilenet_v2_mid');
        if (!existsSync(modelDir)) throw new BackboneError(`nsfwjs@${pkg.version} has no ${modelDir}`);
        return { dir: modelDir, version: pkg.version ?? 'unknown' };
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new BackboneError(`found nsfwjs at ${entry} but not its package.json`);
    dir = up;
  }
}

// ---- layer names -----------------------------------------------------------------------------------------

/** The readable part of a TF node name: after `MobilenetV2/` (or the last `predict/`) when present. */
export function shortNodeName(name: string): string {
  const i = name.lastIndexOf('MobilenetV2/');
  if (i >= 0) return name.slice(i + 'MobilenetV2/'.length);
  const j = name.lastIndexOf('predict/');
  return j >= 0 ? name.slice(j + 'predict/'.length) : name;
}

/** Finds the node for a layer: its full name, or the unique node whose name ends with `/<layer>`. */
export function resolveLayer(model: TfjsGraphModel, layer: string): TfjsNodeDef {
  const exact = model.nodes.get(layer);
  if (exact) return exact;
  const matches = [...model.nodes.values()].filter((n) => n.name.endsWith(`/${layer}`));
  if (matches.length === 1) return matches[0]!;
  if (matches.length > 1) {
    throw new BackboneError(
      `layer "${layer}" is ambiguous in ${model.modelFile}: ${matches.map((n) => shortNodeName(n.name)).join(', ')}`,
      layer,
    );
  }
  const examples = [...model.nodes.values()]
    .filter((n) => n.op !== 'Const')
    .map((n) => shortNodeName(n.name))
    .filter((n) => /expanded_conv_\d+\/(expand\/Relu6|add)$/.test(n))
    .slice(0, 8);
  throw new BackboneError(
    `unknown layer "${layer}": no node of ${model.modelFile} is named so or ends with "/${layer}" ` +
      `(e.g. ${examples.join(', ')}, …)`,
    layer,
  );
}

/** ONNX output name of a layer: a short alias for the documented layers, otherwise the name sanitised. */
export function outputNameFor(layer: string): string {
  const named = NAMED_LAYERS.find((l) => l.layer === layer || layer.endsWith(`/MobilenetV2/${l.layer}`));
  if (named) return named.output;
  return `feat_${shortNodeName(layer).replace(/[^A-Za-z0-9_]+/g, '_').replace(/^_+|_+$/g, '')}`;
}

// ---- conversion ------------------------------------------------------------------------------------------

/** What the converter knows about each converted TF tensor. */
interface Converted {
  value: Value;
  channels: number;
  stride: number;
}

const SUPPORTED_FUSED = new Set(['BiasAdd', 'Relu', 'Relu6']);

/** HWIO (TF Conv2D filter) → OIHW (ONNX Conv weight). */
function hwioToOihw(t: HostTensor<'float32'>): HostTensor<'float32'> {
  const [kh, kw, ci, co] = t.dims as [number, number, number, number];
  const out = new Float32Array(t.data.length);
  for (let y = 0; y < kh; y++)
    for (let x = 0; x < kw; x++)
      for (let i = 0; i < ci; i++)
        for (let o = 0; o < co; o++) out[((o * ci + i) * kh + y) * kw + x] = t.data[((y * kw + x) * ci + i) * co + o]!;
  return f32([co, ci, kh, kw], out);
}

/** [kh, kw, C, M] (TF depthwise filter) → [C·M, 1, kh, kw] (ONNX Conv with group = C; output c·M + m). */
function depthwiseToOnnx(t: HostTensor<'float32'>): HostTensor<'float32'> {
  const [kh, kw, c, m] = t.dims as [number, number, number, number];
  const out = new Float32Array(t.data.length);
  for (let y = 0; y < kh; y++)
    for (let x = 0; x < kw; x++)
      for (let i = 0; i < c; i++)
        for (let j = 0; j < m; j++) out[((i * m + j) * kh + y) * kw + x] = t.data[((y * kw + x) * c + i) * m + j]!;
  return f32([c * m, 1, kh, kw], out);
}

/** Converts the part of a TF.js MobileNetV2 graph that the given layers depend on into an ONNX graph. */
export function convertToOnnx(
  model: TfjsGraphModel,
  layers: readonly string[],
): { graph: Graph; outputs: BackboneOutputSpec[] } {
  if (layers.length === 0) throw new BackboneError('no layers asked for');
  const resolved = layers.map((l) => ({ layer: l, node: resolveLayer(model, l) }));
  const seen = new Set<string>();
  for (const r of resolved) {
    if (seen.has(r.node.name)) throw new BackboneError(`layer "${r.layer}" is asked for twice`, r.layer);
    seen.add(r.node.name);
  }
  const g = new Graph('mobilenetv2_1.4_nsfwjs_backbone', 17);
  const done = new Map<string, Converted>();
  const where = (n: TfjsNodeDef) => `node ${n.name} (${n.op}) of ${model.modelFile}`;

  const weight = (name: string, user: TfjsNodeDef): HostTensor<'float32'> => {
    const w = model.weights.get(name);
    if (!w) throw new BackboneError(`${where(user)} reads ${name}, which is not a weight`, user.name);
    if (w.dtype !== 'float32') throw new BackboneError(`${where(user)}: weight ${name} is ${w.dtype}, expected float32`, user.name);
    return w as HostTensor<'float32'>;
  };
  const isConst = (name: string) => model.nodes.get(name)?.op === 'Const';

  /** A constant operand of an elementwise op, laid out to broadcast against NCHW. */
  const constOperand = (name: string, user: TfjsNodeDef): Value => {
    const w = weight(name, user);
    const label = shortNodeName(name).replace(/\//g, '_');
    if (w.dims.length === 0) return g.initializer(label, w);
    if (w.dims.length === 1) return g.initializer(label, f32([w.dims[0]!, 1, 1], w.data));
    throw new BackboneError(`${where(user)}: constant operand ${name} of rank ${w.dims.length} is not supported`, user.name);
  };

  const convert = (name: string): Converted => {
    const have = done.get(name);
    if (have) return have;
    const node = model.nodes.get(name);
    if (!node) throw new BackboneError(`node ${name} is referenced but missing from ${model.modelFile}`, name);
    const label = shortNodeName(node.name);
    const ins = dataInputs(node);
    if (ins.some((r) => r.output !== 0)) throw new BackboneError(`${where(node)} reads a secondary output, not supported`, node.name);
    const dataFormat = attrString(node, 'data_format');
    if (dataFormat !== undefined && dataFormat !== 'NHWC') {
      throw new BackboneError(`${where(node)} has data_format ${dataFormat}; only NHWC graphs are supported`, node.name);
    }
    let result: Converted;
    switch (node.op) {
      case 'Placeholder': {
        if (g.inputs.length > 0) throw new BackboneError(`${where(node)}: the graph has a second input`, node.name);
        const shape = node.attr?.shape?.shape?.dim?.map((d) => Number(d.size));
        if (shape && shape.length === 4 && shape[3] !== 3) {
          throw new BackboneError(`${where(node)}: expected 3 input channels, got ${shape[3]}`, node.name);
        }
        result = { value: g.input('image', 'float32', ['N', 3, 'H', 'W']), channels: 3, stride: 1 };
        break;
      }
      case 'Identity':
        result = convert(ins[0]!.node);
        break;
      case 'Mul':
      case 'Sub':
      case 'Add':
      case 'AddV2': {
        const onnxOp = node.op === 'Mul' ? 'Mul' : node.op === 'Sub' ? 'Sub' : 'Add';
        const [a, b] = ins.map((r) => r.node) as [string, string];
        if (isConst(a) && isConst(b)) throw new BackboneError(`${where(node)}: both operands constant`, node.name);
        const ca = isConst(a) ? undefined : convert(a);
        const cb = isConst(b) ? undefined : convert(b);
        const va = ca?.value ?? constOperand(a, node);
        const vb = cb?.value ?? constOperand(b, node);
        const ref = (ca ?? cb)!;
        if (ca && cb && (ca.channels !== cb.channels || ca.stride !== cb.stride)) {
          throw new BackboneError(`${where(node)}: operands differ (${ca.channels}@${ca.stride} vs ${cb.channels}@${cb.stride})`, node.name);
        }
        result = { value: g.op(onnxOp, [va, vb], {}, { name: label }), channels: ref.channels, stride: ref.stride };
        break;
      }
      case 'Relu': {
        const x = convert(ins[0]!.node);
        result = { ...x, value: op.relu(g, x.value, label) };
        break;
      }
      case 'Relu6': {
        const x = convert(ins[0]!.node);
        result = { ...x, value: op.clip(g, x.value, 0, 6) };
        break;
      }
      case 'BiasAdd': {
        const x = convert(ins[0]!.node);
        result = { ...x, value: g.op('Add', [x.value, constOperand(ins[1]!.node, node)], {}, { name: label }) };
        break;
      }
      case 'Conv2D':
      case '_FusedConv2D':
      case 'DepthwiseConv2dNative':
      case 'FusedDepthwiseConv2dNative':
        result = convertConv(node, label, ins);
        break;
      default:
        throw new BackboneError(
          `${where(node)}: op ${node.op} is not supported by the MobileNetV2 converter (cut the graph before it)`,
          node.name,
        );
    }
    done.set(name, result);
    return result;
  };

  const convertConv = (node: TfjsNodeDef, label: string, ins: { node: string }[]): Converted => {
    const depthwise = node.op.includes('Depthwise');
    const x = convert(ins[0]!.node);
    const wTf = weight(ins[1]!.node, node);
    const fused = attrStrings(node, 'fused_ops');
    for (const f of fused) {
      if (!SUPPORTED_FUSED.has(f)) throw new BackboneError(`${where(node)}: fused op ${f} is not supported`, node.name);
    }
    if (fused.length > 0 && fused[0] !== 'BiasAdd') throw new BackboneError(`${where(node)}: fused ops ${fused.join('+')} not supported`, node.name);
    const strides = attrInts(node, 'strides') ?? [1, 1, 1, 1];
    const dilations = attrInts(node, 'dilations') ?? [1, 1, 1, 1];
    if (strides[0] !== 1 || strides[3] !== 1 || dilations[0] !== 1 || dilations[3] !== 1) {
      throw new BackboneError(`${where(node)}: strides/dilations over batch or channels`, node.name);
    }
    const [sh, sw] = [strides[1]!, strides[2]!];
    const [dh, dw] = [dilations[1]!, dilations[2]!];
    const [kh, kw, ci, cm] = wTf.dims as [number, number, number, number];
    if (ci !== x.channels) throw new BackboneError(`${where(node)}: filter expects ${ci} channels, input has ${x.channels}`, node.name);
    const w = g.initializer(`${label}/weights`, depthwise ? depthwiseToOnnx(wTf) : hwioToOihw(wTf));
    const outChannels = depthwise ? ci * cm : cm;
    const a: Record<string, Attribute> = {
      kernel_shape: attr.ints([kh, kw]),
      strides: attr.ints([sh, sw]),
      dilations: attr.ints([dh, dw]),
    };
    if (depthwise) a.group = attr.int(ci);
    const padding = attrString(node, 'padding') ?? 'VALID';
    if (padding === 'SAME') {
      if (sh === 1 && sw === 1) {
        // Stride 1: TF's SAME pads (k−1)·d in total, the smaller half first — independent of the input size.
        const th = (kh - 1) * dh;
        const tw = (kw - 1) * dw;
        a.pads = attr.ints([Math.floor(th / 2), Math.floor(tw / 2), th - Math.floor(th / 2), tw - Math.floor(tw / 2)]);
      } else {
        // Strided: the padding depends on the input size's parity; SAME_UPPER is TF's rule (extra pad at the end).
        a.auto_pad = attr.string('SAME_UPPER');
      }
    } else if (padding === 'EXPLICIT') {
      const p = attrInts(node, 'explicit_paddings') ?? [];
      if (p.length !== 8 || p[0] || p[1] || p[6] || p[7]) throw new BackboneError(`${where(node)}: bad explicit_paddings`, node.name);
      a.pads = attr.ints([p[2]!, p[4]!, p[3]!, p[5]!]);
    } else if (padding !== 'VALID') {
      throw new BackboneError(`${where(node)}: padding ${padding} not supported`, node.name);
    }
    let bias: Value | null = null;
    if (fused[0] === 'BiasAdd') {
      const b = weight(ins[2]!.node, node);
      if (b.data.length !== outChannels) throw new BackboneError(`${where(node)}: bias has ${b.data.length} values for ${outChannels} channels`, node.name);
      bias = g.initializer(`${label}/bias`, f32([outChannels], b.data));
    }
    let y = g.op('Conv', bias ? [x.value, w, bias] : [x.value, w], a, { name: label });
    const act = fused[1];
    if (act === 'Relu6') y = op.clip(g, y, 0, 6);
    else if (act === 'Relu') y = op.relu(g, y);
    if (fused.length > 2) throw new BackboneError(`${where(node)}: fused ops ${fused.join('+')} not supported`, node.name);
    return { value: y, channels: outChannels, stride: x.stride * sh };
  };

  const outputs: BackboneOutputSpec[] = [];
  const usedOutputNames = new Set<string>();
  for (const r of resolved) {
    const c = convert(r.node.name);
    const name = outputNameFor(r.node.name);
    if (usedOutputNames.has(name)) throw new BackboneError(`two layers map to output name ${name}`, r.layer);
    usedOutputNames.add(name);
    const out = g.op('Identity', [c.value], {}, { name, shapes: [['N', c.channels, `H_${name}`, `W_${name}`]] });
    if (out.name !== name) throw new BackboneError(`output name ${name} clashes with an internal name`, r.layer);
    g.output(out);
    outputs.push({ name, layer: r.layer, node: r.node.name, channels: c.channels, stride: c.stride });
  }
  if (g.inputs.length !== 1) throw new BackboneError('the cut graph does not reach the image input');
  return { graph: g, outputs };
}

// ---- public API ------------------------------------------------------------------------------------------

export interface BuildBackboneOptions {
  /** Layers to cut at (short or full TF node names); default `expanded_conv_6/expand/Relu6`. */
  layers?: string[];
  /** Override the TF.js model folder (default: nsfwjs' `dist/models/mobilenet_v2_mid`). */
  modelDir?: string;
}

function inputSpec(): BackboneInputSpec {
  return { name: 'image', layout: 'NCHW', channels: 'RGB', range: [0, 1], mean: [0, 0, 0], std: [1, 1, 1], nativeSize: [224, 224] };
}

function sourceOf(opts: BuildBackboneOptions): { dir: string; source: string } {
  if (opts.modelDir) return { dir: opts.modelDir, source: `tfjs graph model at ${opts.modelDir}` };
  const loc = locateNsfwjsMobileNetV2();
  return { dir: loc.dir, source: `nsfwjs@${loc.version} dist/models/mobilenet_v2_mid (MobileNetV2 1.4, TF-Hub ImageNet, NSFW fine-tuned, uint8-quantised)` };
}

/** Generates the ONNX feature extractor in memory. */
export async function buildMobileNetV2Backbone(opts: BuildBackboneOptions = {}): Promise<BuiltBackbone> {
  const layers = opts.layers && opts.layers.length > 0 ? opts.layers : [...DEFAULT_BACKBONE_LAYERS];
  const { dir, source } = sourceOf(opts);
  const tfModel = await loadTfjsGraphModel(dir);
  const { graph, outputs } = convertToOnnx(tfModel, layers);
  const model = encodeModel(graph, {
    producerName: 'ast-edge',
    producerVersion: String(BACKBONE_GENERATOR_VERSION),
    docString: 'MobileNetV2 1.4 feature extractor (nsfwjs weights). Input image: float32 NCHW RGB in [0,1], dynamic N/H/W.',
    metadata: { source, layers: JSON.stringify(outputs.map((o) => ({ name: o.name, layer: o.layer, channels: o.channels, stride: o.stride }))) },
  });
  return {
    format: 'ast-edge-backbone/1',
    family: 'mobilenetv2-1.4-nsfwjs',
    input: inputSpec(),
    outputs,
    source,
    generatorVersion: BACKBONE_GENERATOR_VERSION,
    model,
  };
}

/** Default cache folder: `<project>/models/cache`. */
export function defaultBackboneCacheDir(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../models/cache');
}

/** Cache key for a layer list (and generator version / weight source, so either changing regenerates). */
export function backboneCacheKey(layers: readonly string[], source: string): string {
  return createHash('sha256')
    .update(JSON.stringify({ v: BACKBONE_GENERATOR_VERSION, source, layers }))
    .digest('hex')
    .slice(0, 16);
}

async function writeAtomic(file: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await writeFile(tmp, data);
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

/**
 * Returns the cached backbone for these layers, generating `backbone-mobilenetv2-<key>.onnx` and its `.json`
 * descriptor (both written atomically) when they are missing or do not match each other.
 */
export async function ensureDefaultBackbone(
  opts: BuildBackboneOptions & { cacheDir?: string } = {},
): Promise<CachedBackbone> {
  const layers = opts.layers && opts.layers.length > 0 ? opts.layers : [...DEFAULT_BACKBONE_LAYERS];
  const cacheDir = path.resolve(opts.cacheDir ?? defaultBackboneCacheDir());
  // The key uses the source *identity* only (package version or folder), so a cache hit needs no weights.
  let sourceId: string;
  if (opts.modelDir) sourceId = path.resolve(opts.modelDir);
  else {
    try {
      sourceId = `nsfwjs@${locateNsfwjsMobileNetV2().version}`;
    } catch (err) {
      // No nsfwjs: accept any cached file for these layers that a previous run left.
      const found = await findAnyCached(cacheDir, layers);
      if (found) return found;
      throw err;
    }
  }
  const key = backboneCacheKey(layers, sourceId);
  const file = path.join(cacheDir, `backbone-mobilenetv2-${key}.onnx`);
  const descriptorFile = file.replace(/\.onnx$/, '.json');
  const reused = await readCached(file, descriptorFile);
  if (reused) return reused;

  const built = await buildMobileNetV2Backbone({ ...opts, layers });
  const { model, ...descriptor } = built;
  const digest = sha256(model);
  await mkdir(cacheDir, { recursive: true });
  await writeAtomic(file, model);
  const json = { ...descriptor, layers, key, sourceId, file: path.basename(file), sha256: digest, bytes: model.byteLength };
  await writeAtomic(descriptorFile, `${JSON.stringify(json, null, 2)}\n`);
  return { ...descriptor, file, descriptorFile, sha256: digest, cached: false };
}

interface DescriptorFile extends BackboneDescriptor {
  layers: string[];
  key: string;
  sourceId: string;
  file: string;
  sha256: string;
  bytes: number;
}

async function readCached(file: string, descriptorFile: string): Promise<CachedBackbone | undefined> {
  let d: DescriptorFile;
  try {
    d = JSON.parse(await readFile(descriptorFile, 'utf8')) as DescriptorFile;
    if ((await stat(file)).size !== d.bytes) return undefined;
  } catch {
    return undefined;
  }
  if (d.format !== 'ast-edge-backbone/1' || d.generatorVersion !== BACKBONE_GENERATOR_VERSION) return undefined;
  if (sha256(await readFile(file)) !== d.sha256) return undefined;
  const { layers: _l, key: _k, sourceId: _s, file: _f, bytes: _b, sha256: digest, ...descriptor } = d;
  return { ...descriptor, file, descriptorFile, sha256: digest, cached: true };
}

async function findAnyCached(cacheDir: string, layers: readonly string[]): Promise<CachedBackbone | undefined> {
  const { readdir } = await import('node:fs/promises');
  let names: string[];
  try {
    names = await readdir(cacheDir);
  } catch {
    return undefined;
  }
  for (const n of names.filter((x) => /^backbone-mobilenetv2-[0-9a-f]+\.json$/.test(x)).sort()) {
    const descriptorFile = path.join(cacheDir, n);
    try {
      const d = JSON.parse(await readFile(descriptorFile, 'utf8')) as DescriptorFile;
      if (JSON.stringify(d.layers) !== JSON.stringify(layers)) continue;
      const hit = await readCached(path.join(cacheDir, d.file), descriptorFile);
      if (hit) return hit;
    } catch {
      /* not ours or damaged: skip */
    }
  }
  return undefined;
}
