/** Conversion between the in-memory `Graph` and ONNX ModelProto bytes. */
import { AttributeTypeCode, ModelProtoType } from './onnx-proto.js';
import { Graph, GraphError, Value, type Attribute, type Dim } from './graph.js';
import {
  ONNX_DTYPE_CODE,
  dataTypeFromCode,
  tensor,
  tensorBytes,
  typedArrayFromBytes,
  type DataType,
  type HostTensor,
} from './tensor.js';

/** ONNX IR version 8 goes with opsets 17 and 18. */
const IR_VERSION = 8;

export interface ModelOptions {
  producerName?: string;
  producerVersion?: string;
  docString?: string;
  metadata?: Record<string, string>;
  /** Extra opset imports (e.g. `com.microsoft`), beside the graph's default-domain opset. */
  extraOpsets?: Record<string, number>;
}

function valueInfo(v: Value) {
  return {
    name: v.name,
    type: {
      tensor_type: {
        elem_type: ONNX_DTYPE_CODE[v.dtype],
        ...(v.shape
          ? {
              shape: {
                dim: v.shape.map((d) => (typeof d === 'number' ? { dim_value: d } : { dim_param: d })),
              },
            }
          : {}),
      },
    },
  };
}

function tensorProto(name: string, t: HostTensor) {
  return {
    name,
    dims: [...t.dims],
    data_type: ONNX_DTYPE_CODE[t.dtype],
    raw_data: tensorBytes(t),
  };
}

function attributeProto(name: string, a: Attribute) {
  switch (a.kind) {
    case 'int':
      return { name, type: AttributeTypeCode.INT, i: a.value };
    case 'float':
      return { name, type: AttributeTypeCode.FLOAT, f: a.value };
    case 'string':
      return { name, type: AttributeTypeCode.STRING, s: new TextEncoder().encode(a.value) };
    case 'ints':
      return { name, type: AttributeTypeCode.INTS, ints: [...a.value] };
    case 'floats':
      return { name, type: AttributeTypeCode.FLOATS, floats: [...a.value] };
    case 'tensor':
      return { name, type: AttributeTypeCode.TENSOR, t: tensorProto('', a.value) };
  }
}

/** Serializes a graph as an ONNX model (bytes of a ModelProto). */
export function encodeModel(graph: Graph, options: ModelOptions = {}): Uint8Array {
  if (graph.outputs.length === 0) throw new GraphError(`graph ${graph.name} has no outputs`);
  const opsets = [{ domain: '', version: graph.opset }];
  for (const [domain, version] of Object.entries(options.extraOpsets ?? {})) opsets.push({ domain, version });
  const message = {
    ir_version: IR_VERSION,
    opset_import: opsets,
    producer_name: options.producerName ?? 'ast-edge',
    producer_version: options.producerVersion ?? '0',
    doc_string: options.docString ?? '',
    metadata_props: Object.entries(options.metadata ?? {}).map(([key, value]) => ({ key, value })),
    graph: {
      name: graph.name,
      node: graph.nodes.map((n) => ({
        name: n.name,
        op_type: n.opType,
        domain: n.domain,
        input: n.inputs.map((v) => v?.name ?? ''),
        output: n.outputs.map((v) => v.name),
        attribute: Object.entries(n.attributes).map(([k, a]) => attributeProto(k, a)),
      })),
      initializer: graph.initializers.map((i) => tensorProto(i.value.name, i.tensor)),
      input: graph.inputs.map(valueInfo),
      output: graph.outputs.map(valueInfo),
    },
  };
  const err = ModelProtoType.verify(message);
  if (err) throw new GraphError(`graph ${graph.name} does not make a valid ModelProto: ${err}`);
  return ModelProtoType.encode(ModelProtoType.fromObject(message)).finish();
}

// ---- decoding -------------------------------------------------------------------------------------------

interface DecodedTensor {
  name?: string;
  dims?: number[];
  data_type?: number;
  raw_data?: Uint8Array;
  float_data?: number[];
  int32_data?: number[];
  int64_data?: number[];
  data_location?: number;
}

interface DecodedAttribute {
  name: string;
  type?: number;
  f?: number;
  i?: number;
  s?: Uint8Array;
  t?: DecodedTensor;
  floats?: number[];
  ints?: number[];
  g?: unknown;
  graphs?: unknown[];
}

interface DecodedValueInfo {
  name: string;
  type?: { tensor_type?: { elem_type?: number; shape?: { dim?: { dim_value?: number; dim_param?: string }[] } } };
}

export interface DecodedModel {
  ir_version?: number;
  opset_import?: { domain?: string; version?: number }[];
  producer_name?: string;
  metadata_props?: { key: string; value: string }[];
  graph: {
    name?: string;
    node?: {
      name?: string;
      op_type: string;
      domain?: string;
      input?: string[];
      output?: string[];
      attribute?: DecodedAttribute[];
    }[];
    initializer?: DecodedTensor[];
    input?: DecodedValueInfo[];
    output?: DecodedValueInfo[];
  };
}

export function decodeModel(bytes: Uint8Array): DecodedModel {
  const msg = ModelProtoType.decode(bytes);
  const obj = ModelProtoType.toObject(msg, { longs: Number, arrays: true, defaults: false }) as DecodedModel;
  if (!obj.graph) throw new GraphError('ONNX model has no graph');
  return obj;
}

export function decodeTensor(t: DecodedTensor): HostTensor {
  if (t.data_location === 1) throw new GraphError(`tensor ${t.name} keeps its data in an external file, which is not supported`);
  const dtype = dataTypeFromCode(t.data_type ?? 0);
  const dims = t.dims ?? [];
  if (t.raw_data && t.raw_data.length > 0) return tensor(dtype, dims, typedArrayFromBytes(dtype, t.raw_data));
  switch (dtype) {
    case 'float32':
      return tensor(dtype, dims, Float32Array.from(t.float_data ?? []));
    case 'int64':
      return tensor(dtype, dims, BigInt64Array.from((t.int64_data ?? []).map((x) => BigInt(x))));
    case 'int32':
      return tensor(dtype, dims, Int32Array.from(t.int32_data ?? []));
    case 'int8':
      return tensor(dtype, dims, Int8Array.from(t.int32_data ?? []));
    case 'float16':
      // ONNX stores float16 bit patterns in int32_data when raw_data is absent.
      return tensor(dtype, dims, Uint16Array.from(t.int32_data ?? []));
    case 'uint8':
    case 'bool':
      return tensor(dtype, dims, Uint8Array.from(t.int32_data ?? []));
  }
}

function decodeAttribute(a: DecodedAttribute): Attribute {
  switch (a.type) {
    case AttributeTypeCode.INT:
      return { kind: 'int', value: a.i ?? 0 };
    case AttributeTypeCode.FLOAT:
      return { kind: 'float', value: a.f ?? 0 };
    case AttributeTypeCode.STRING:
      return { kind: 'string', value: new TextDecoder().decode(a.s ?? new Uint8Array()) };
    case AttributeTypeCode.INTS:
      return { kind: 'ints', value: a.ints ?? [] };
    case AttributeTypeCode.FLOATS:
      return { kind: 'floats', value: a.floats ?? [] };
    case AttributeTypeCode.TENSOR:
      return { kind: 'tensor', value: decodeTensor(a.t ?? {}) };
    default:
      throw new GraphError(`attribute ${a.name} has type ${a.type}, which embedding does not support (subgraphs?)`);
  }
}

function dimsOf(vi: DecodedValueInfo): Dim[] | undefined {
  const dims = vi.type?.tensor_type?.shape?.dim;
  return dims?.map((d) => d.dim_value ?? d.dim_param ?? '?');
}

export interface EmbeddedModel {
  /** The embedded model's graph outputs, by their original names. */
  outputs: Map<string, Value>;
  /** The embedded model's default-domain opset. */
  opset: number;
}

/**
 * Copies an ONNX model's nodes and initializers into `graph`, feeding its graph inputs from `inputs`
 * (by original name) and prefixing every internal name so several models can live in one graph.
 * This is how a backbone becomes the front of the fused detector graph.
 */
export function embedModel(
  graph: Graph,
  model: DecodedModel,
  inputs: Record<string, Value>,
  prefix: string,
): EmbeddedModel {
  const opset = model.opset_import?.find((o) => !o.domain)?.version ?? 1;
  if (opset > graph.opset) {
    throw new GraphError(`embedded model uses opset ${opset} but the target graph is opset ${graph.opset}`);
  }
  const scope = new Map<string, Value>();
  const initNames = new Set<string>();
  for (const init of model.graph.initializer ?? []) {
    const t = decodeTensor(init);
    scope.set(init.name!, graph.initializer(`${prefix}${init.name}`, t));
    initNames.add(init.name!);
  }
  for (const vi of model.graph.input ?? []) {
    if (initNames.has(vi.name)) continue; // old exporters list initializers as inputs too
    const given = inputs[vi.name];
    if (!given) throw new GraphError(`embedded model input "${vi.name}" was not connected`);
    scope.set(vi.name, given);
  }
  for (const n of model.graph.node ?? []) {
    const ins = (n.input ?? []).map((name) => {
      if (name === '') return null;
      const v = scope.get(name);
      if (!v) throw new GraphError(`embedded node ${n.name ?? n.op_type} reads "${name}" before it is produced`);
      return v;
    });
    const attrs: Record<string, Attribute> = {};
    for (const a of n.attribute ?? []) attrs[a.name] = decodeAttribute(a);
    const outs = graph.node(n.op_type, ins, attrs, {
      outputs: (n.output ?? []).length,
      name: `${prefix}${n.name || n.op_type}`,
      domain: n.domain ?? '',
    });
    (n.output ?? []).forEach((name, i) => {
      if (name !== '') scope.set(name, outs[i]!);
    });
  }
  const outputs = new Map<string, Value>();
  for (const vi of model.graph.output ?? []) {
    const v = scope.get(vi.name);
    if (!v) throw new GraphError(`embedded model output "${vi.name}" is never produced`);
    outputs.set(vi.name, v);
  }
  return { outputs, opset };
}

/** Names, dtypes and shapes of a model's graph inputs and outputs (initializers excluded). */
export function modelSignature(model: DecodedModel): {
  inputs: { name: string; dtype: DataType; shape?: Dim[] }[];
  outputs: { name: string; dtype: DataType; shape?: Dim[] }[];
} {
  const inits = new Set((model.graph.initializer ?? []).map((i) => i.name));
  const sig = (vi: DecodedValueInfo) => ({
    name: vi.name,
    dtype: dataTypeFromCode(vi.type?.tensor_type?.elem_type ?? 1),
    shape: dimsOf(vi),
  });
  return {
    inputs: (model.graph.input ?? []).filter((v) => !inits.has(v.name)).map(sig),
    outputs: (model.graph.output ?? []).map(sig),
  };
}
