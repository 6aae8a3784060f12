/**
 * Reading TensorFlow.js graph models (the `tfjs-converter` "graph-model" format) without TensorFlow.js.
 *
 * A graph model is a `model.json` (a TF GraphDef as JSON under `modelTopology`, plus a `weightsManifest`)
 * and one or more binary weight shards. Packages that ship models for bundlers (nsfwjs does this) wrap
 * both in small UMD/browserify JavaScript files: `model.min.js` evaluates to the model.json object and
 * each `group1-shardKofN.min.js` to the shard's bytes as a base64 string. This module reads either form,
 * concatenates the shards, and dequantizes the weights the way tfjs-core's `decodeWeights` does:
 * `uint8`/`uint16` affine quantization (value = min + scale·q, computed in double precision and stored as
 * float32) and `float16` storage.
 *
 * Everything here is a pure function of the files' contents except `loadTfjsGraphModel`, which reads them.
 */
import { readFile, access } from 'node:fs/promises';
import path from 'node:path';
import vm from 'node:vm';
import type { HostTensor } from '../../onnx/tensor.js';

// ---- types ------------------------------------------------------------------------------------------------

/** One attribute value of a TF NodeDef in tfjs JSON form (int64s arrive as strings, strings as base64). */
export interface TfjsAttrValue {
  i?: string | number;
  f?: number;
  b?: boolean;
  s?: string;
  type?: string;
  list?: { i?: (string | number)[]; f?: number[]; s?: string[]; b?: boolean[]; type?: string[] };
  shape?: { dim?: { size?: string | number }[]; unknownRank?: boolean };
  tensor?: { dtype?: string; tensorShape?: { dim?: { size?: string | number }[] } };
}

export interface TfjsNodeDef {
  name: string;
  op: string;
  input?: string[];
  attr?: Record<string, TfjsAttrValue>;
  device?: string;
}

export interface TfjsQuantization {
  dtype: 'uint8' | 'uint16' | 'float16';
  min?: number;
  scale?: number;
  original_dtype?: string;
}

export interface TfjsWeightSpec {
  name: string;
  shape: number[];
  dtype: 'float32' | 'int32' | 'bool' | 'string' | 'complex64';
  quantization?: TfjsQuantization;
}

export interface TfjsWeightsGroup {
  paths: string[];
  weights: TfjsWeightSpec[];
}

export interface TfjsModelJson {
  format?: string;
  generatedBy?: string;
  convertedBy?: string | null;
  userDefinedMetadata?: Record<string, unknown>;
  modelTopology: { node: TfjsNodeDef[]; versions?: unknown; library?: unknown };
  weightsManifest: TfjsWeightsGroup[];
}

/** A loaded graph model: the JSON, the raw (still quantized) weight bytes, and the dequantized weights. */
export interface TfjsGraphModel {
  /** The folder the files were read from. */
  readonly dir: string;
  /** The file the topology came from (for error messages). */
  readonly modelFile: string;
  readonly json: TfjsModelJson;
  /** All shards concatenated in manifest order, exactly as stored (what tf.io.fromMemory expects). */
  readonly weightData: Uint8Array;
  /** Every manifest entry flattened in order (what tf.io.fromMemory expects as weightSpecs). */
  readonly weightSpecs: readonly TfjsWeightSpec[];
  readonly nodes: ReadonlyMap<string, TfjsNodeDef>;
  /** Dequantized weights by name (float32, or int32 for int32 weights). */
  readonly weights: ReadonlyMap<string, HostTensor<'float32'> | HostTensor<'int32'>>;
}

export class TfjsModelError extends Error {
  constructor(
    message: string,
    /** The file involved, when one is. */
    readonly file?: string,
    /** The graph node or weight involved, when one is. */
    readonly node?: string,
  ) {
    super(message);
    this.name = 'TfjsModelError';
  }
}

// ---- JavaScript-wrapped files -----------------------------------------------------------------------------

/**
 * Evaluates a UMD/CommonJS-wrapped data file (as emitted by browserify for nsfwjs' models) in an empty
 * context and returns what it assigns to `module.exports`. The sandbox has no `require`, `process` or
 * file access; the files only build a literal.
 */
export function evaluateWrappedModule(source: string, file: string): unknown {
  const module = { exports: {} as unknown };
  const sandbox = { module, exports: module.exports };
  try {
    vm.runInNewContext(source, sandbox, { filename: file, timeout: 30_000 });
  } catch (err) {
    throw new TfjsModelError(`could not evaluate ${file}: ${(err as Error).message}`, file);
  }
  if (module.exports === sandbox.exports && typeof module.exports === 'object' && Object.keys(module.exports as object).length === 0) {
    throw new TfjsModelError(`${file} did not export anything (not a UMD/CommonJS-wrapped data file?)`, file);
  }
  return module.exports;
}

// ---- validation -------------------------------------------------------------------------------------------

/** Checks the shape of a parsed model.json and returns it typed. */
export function parseModelJson(value: unknown, file: string): TfjsModelJson {
  const fail = (what: string): never => {
    throw new TfjsModelError(`${file} is not a TF.js graph model: ${what}`, file);
  };
  if (typeof value !== 'object' || value === null) fail('not an object');
  const m = value as Record<string, unknown>;
  if (m.format !== undefined && m.format !== 'graph-model') fail(`format is "${String(m.format)}", expected "graph-model"`);
  const topo = m.modelTopology as Record<string, unknown> | undefined;
  if (!topo || !Array.isArray(topo.node)) fail('modelTopology.node is missing');
  if (!Array.isArray(m.weightsManifest)) fail('weightsManifest is missing');
  for (const [gi, group] of (m.weightsManifest as unknown[]).entries()) {
    const g = group as Partial<TfjsWeightsGroup>;
    if (!Array.isArray(g.paths) || !Array.isArray(g.weights)) fail(`weightsManifest[${gi}] lacks paths or weights`);
    for (const w of g.weights!) {
      if (typeof w?.name !== 'string' || !Array.isArray(w.shape) || typeof w.dtype !== 'string') {
        fail(`weightsManifest[${gi}] has a malformed weight entry ${JSON.stringify(w)?.slice(0, 200)}`);
      }
    }
  }
  for (const n of topo!.node as unknown[]) {
    const node = n as Partial<TfjsNodeDef>;
    if (typeof node?.name !== 'string' || typeof node.op !== 'string') fail(`malformed node ${JSON.stringify(n)?.slice(0, 200)}`);
  }
  return value as TfjsModelJson;
}

// ---- weights ----------------------------------------------------------------------------------------------

const STORED_BYTES: Record<string, number> = { uint8: 1, uint16: 2, float16: 2 };
const PLAIN_BYTES: Record<string, number> = { float32: 4, int32: 4, bool: 1, complex64: 8 };

export function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Bytes a weight occupies in the shards. */
export function storedByteLength(spec: TfjsWeightSpec): number {
  if (spec.dtype === 'string') {
    throw new TfjsModelError(`weight ${spec.name} has dtype string, which this reader does not support`, undefined, spec.name);
  }
  const per = spec.quantization ? STORED_BYTES[spec.quantization.dtype] : PLAIN_BYTES[spec.dtype];
  if (per === undefined) {
    const what = spec.quantization ? `quantization dtype ${spec.quantization.dtype}` : `dtype ${spec.dtype}`;
    throw new TfjsModelError(`weight ${spec.name} has unsupported ${what}`, undefined, spec.name);
  }
  return elementCount(spec.shape) * per;
}

/** IEEE 754 half → number. */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 0x1f) return frac ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

/**
 * Decodes one weight from its stored bytes. Affine-quantized weights become `min + scale·q` (as tfjs-core
 * does it: double-precision arithmetic, rounded once to float32; int32 weights are rounded to integers).
 */
export function decodeWeight(spec: TfjsWeightSpec, bytes: Uint8Array): HostTensor<'float32'> | HostTensor<'int32'> {
  const n = elementCount(spec.shape);
  const expected = storedByteLength(spec);
  if (bytes.byteLength !== expected) {
    throw new TfjsModelError(`weight ${spec.name}: got ${bytes.byteLength} bytes, expected ${expected}`, undefined, spec.name);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dims = [...spec.shape];
  const q = spec.quantization;
  if (spec.dtype !== 'float32' && spec.dtype !== 'int32') {
    throw new TfjsModelError(`weight ${spec.name} has dtype ${spec.dtype}; only float32 and int32 are supported`, undefined, spec.name);
  }
  const read = (i: number): number => {
    if (!q) return spec.dtype === 'float32' ? view.getFloat32(i * 4, true) : view.getInt32(i * 4, true);
    if (q.dtype === 'float16') return halfToFloat(view.getUint16(i * 2, true));
    const raw = q.dtype === 'uint8' ? view.getUint8(i) : view.getUint16(i * 2, true);
    return raw * q.scale! + q.min!;
  };
  if (q && (q.dtype === 'uint8' || q.dtype === 'uint16') && (typeof q.min !== 'number' || typeof q.scale !== 'number')) {
    throw new TfjsModelError(`weight ${spec.name}: ${q.dtype} quantization without numeric min and scale`, undefined, spec.name);
  }
  if (spec.dtype === 'float32') {
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = read(i);
    return { dtype: 'float32', dims, data };
  }
  const data = new Int32Array(n);
  for (let i = 0; i < n; i++) data[i] = q ? Math.round(read(i)) : read(i);
  return { dtype: 'int32', dims, data };
}

/** Splits the concatenated shard bytes along the manifest and decodes every weight. */
export function decodeWeights(
  specs: readonly TfjsWeightSpec[],
  data: Uint8Array,
  file = 'weights',
): Map<string, HostTensor<'float32'> | HostTensor<'int32'>> {
  const out = new Map<string, HostTensor<'float32'> | HostTensor<'int32'>>();
  let offset = 0;
  for (const spec of specs) {
    const size = storedByteLength(spec);
    if (offset + size > data.byteLength) {
      throw new TfjsModelError(
        `${file}: weight ${spec.name} needs bytes ${offset}..${offset + size} but the shards hold only ${data.byteLength}`,
        file,
        spec.name,
      );
    }
    out.set(spec.name, decodeWeight(spec, data.subarray(offset, offset + size)));
    offset += size;
  }
  if (offset !== data.byteLength) {
    throw new TfjsModelError(`${file}: the manifest accounts for ${offset} bytes but the shards hold ${data.byteLength}`, file);
  }
  return out;
}

// ---- node helpers -----------------------------------------------------------------------------------------

/** An input reference `name`, `name:k` or `^name` (control dependency) taken apart. */
export function parseInputRef(ref: string): { node: string; output: number; control: boolean } {
  const control = ref.startsWith('^');
  const body = control ? ref.slice(1) : ref;
  const m = /^(.*):(\d+)$/.exec(body);
  return m ? { node: m[1]!, output: Number(m[2]), control } : { node: body, output: 0, control };
}

/** Data (non-control) inputs of a node. */
export function dataInputs(node: TfjsNodeDef): { node: string; output: number }[] {
  return (node.input ?? []).map(parseInputRef).filter((r) => !r.control);
}

const decodeBase64 = (s: string) => Buffer.from(s, 'base64').toString('utf8');

export function attrString(node: TfjsNodeDef, key: string): string | undefined {
  const s = node.attr?.[key]?.s;
  return s === undefined ? undefined : decodeBase64(s);
}

export function attrStrings(node: TfjsNodeDef, key: string): string[] {
  return (node.attr?.[key]?.list?.s ?? []).map(decodeBase64);
}

export function attrInts(node: TfjsNodeDef, key: string): number[] | undefined {
  const l = node.attr?.[key]?.list;
  if (!l) return undefined;
  return (l.i ?? []).map(Number);
}

export function attrInt(node: TfjsNodeDef, key: string): number | undefined {
  const i = node.attr?.[key]?.i;
  return i === undefined ? undefined : Number(i);
}

export function attrFloat(node: TfjsNodeDef, key: string): number | undefined {
  return node.attr?.[key]?.f;
}

// ---- loading ----------------------------------------------------------------------------------------------

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}

async function readModelJson(dir: string): Promise<{ json: TfjsModelJson; file: string }> {
  const plain = path.join(dir, 'model.json');
  if (await exists(plain)) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(await readFile(plain, 'utf8'));
    } catch (err) {
      throw new TfjsModelError(`${plain} is not valid JSON: ${(err as Error).message}`, plain);
    }
    return { json: parseModelJson(parsed, plain), file: plain };
  }
  const wrapped = path.join(dir, 'model.min.js');
  if (await exists(wrapped)) {
    return { json: parseModelJson(evaluateWrappedModule(await readFile(wrapped, 'utf8'), wrapped), wrapped), file: wrapped };
  }
  throw new TfjsModelError(`no model.json or model.min.js in ${dir}`, dir);
}

/** Reads one shard: raw binary under its manifest path, or nsfwjs-style `<path>.min.js` holding base64. */
async function readShard(dir: string, shardPath: string): Promise<Uint8Array> {
  const raw = path.join(dir, shardPath);
  if (await exists(raw)) return new Uint8Array(await readFile(raw));
  const wrapped = `${raw}.min.js`;
  if (await exists(wrapped)) {
    const value = evaluateWrappedModule(await readFile(wrapped, 'utf8'), wrapped);
    if (typeof value !== 'string') throw new TfjsModelError(`${wrapped} does not export a base64 string`, wrapped);
    return new Uint8Array(Buffer.from(value, 'base64'));
  }
  throw new TfjsModelError(`weight shard "${shardPath}" not found in ${dir} (looked for ${shardPath} and ${shardPath}.min.js)`, raw);
}

/** Reads a TF.js graph model folder (plain or JS-wrapped files) and dequantizes its weights. */
export async function loadTfjsGraphModel(dir: string): Promise<TfjsGraphModel> {
  const { json, file } = await readModelJson(dir);
  const shards: Uint8Array[] = [];
  for (const group of json.weightsManifest) for (const p of group.paths) shards.push(await readShard(dir, p));
  const total = shards.reduce((a, s) => a + s.byteLength, 0);
  const weightData = new Uint8Array(total);
  let offset = 0;
  for (const s of shards) {
    weightData.set(s, offset);
    offset += s.byteLength;
  }
  const weightSpecs = json.weightsManifest.flatMap((g) => g.weights);
  const weights = decodeWeights(weightSpecs, weightData, file);
  const nodes = new Map<string, TfjsNodeDef>();
  for (const n of json.modelTopology.node) {
    if (nodes.has(n.name)) throw new TfjsModelError(`${file}: node name ${n.name} appears twice`, file, n.name);
    nodes.set(n.name, n);
  }
  for (const n of nodes.values()) {
    if (n.op === 'Const' && !weights.has(n.name)) {
      throw new TfjsModelError(`${file}: Const node ${n.name} has no entry in the weights manifest`, file, n.name);
    }
  }
  return { dir, modelFile: file, json, weightData, weightSpecs, nodes, weights };
}
