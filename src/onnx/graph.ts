/**
 * A typed, in-memory ONNX graph that model code builds op by op.
 *
 * Every node keeps references to its input and output `Value`s, so the graph can be walked backwards:
 * reverse-mode autodiff (training graphs) is a pass over `nodes` that appends gradient nodes to the same
 * builder, and inference graphs are the same model code without that pass.
 */
import type { DataType, HostTensor } from './tensor.js';
import { inferShapes } from './shape-inference.js';

export type Dim = number | string;

export class Value {
  constructor(
    readonly name: string,
    readonly dtype: DataType,
    /** Known static shape (symbolic dims as strings); undefined when not tracked. */
    readonly shape: readonly Dim[] | undefined,
    /** The node that computes this value; undefined for graph inputs and initializers. */
    readonly producer: GraphNode | undefined,
  ) {}
}

export type Attribute =
  | { kind: 'int'; value: number }
  | { kind: 'float'; value: number }
  | { kind: 'string'; value: string }
  | { kind: 'ints'; value: readonly number[] }
  | { kind: 'floats'; value: readonly number[] }
  | { kind: 'tensor'; value: HostTensor };

/** Attribute constructors: ONNX distinguishes int from float attributes, JavaScript numbers do not. */
export const attr = {
  int: (value: number): Attribute => ({ kind: 'int', value }),
  float: (value: number): Attribute => ({ kind: 'float', value }),
  string: (value: string): Attribute => ({ kind: 'string', value }),
  ints: (value: readonly number[]): Attribute => ({ kind: 'ints', value }),
  floats: (value: readonly number[]): Attribute => ({ kind: 'floats', value }),
  tensor: (value: HostTensor): Attribute => ({ kind: 'tensor', value }),
};

export interface GraphNode {
  readonly name: string;
  readonly opType: string;
  readonly domain: string;
  /** `null` marks an omitted optional input (an empty name in ONNX). */
  readonly inputs: readonly (Value | null)[];
  readonly outputs: readonly Value[];
  readonly attributes: Readonly<Record<string, Attribute>>;
}

export interface Initializer {
  readonly value: Value;
  readonly tensor: HostTensor;
}

export interface NodeOptions {
  /** How many outputs the node has (default 1). */
  outputs?: number;
  /** Output dtypes, when they differ from the first input's. */
  dtypes?: readonly DataType[];
  /** Output shapes when known. */
  shapes?: readonly (readonly Dim[] | undefined)[];
  /** Base for the generated node and output names. */
  name?: string;
  domain?: string;
}

export class GraphError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GraphError';
  }
}

export class Graph {
  readonly inputs: Value[] = [];
  readonly outputs: Value[] = [];
  readonly nodes: GraphNode[] = [];
  readonly initializers: Initializer[] = [];
  private readonly usedNames = new Set<string>();
  private counter = 0;

  constructor(
    readonly name: string,
    /** Default-domain opset the graph is written against; op wrappers adapt to it (e.g. Reduce* at 18). */
    readonly opset = 17,
  ) {}

  /** A graph-unique name derived from `base`. */
  fresh(base: string): string {
    let candidate = base;
    while (this.usedNames.has(candidate)) candidate = `${base}_${++this.counter}`;
    this.usedNames.add(candidate);
    return candidate;
  }

  private claim(name: string): string {
    if (this.usedNames.has(name)) throw new GraphError(`name "${name}" is already used in graph ${this.name}`);
    this.usedNames.add(name);
    return name;
  }

  input(name: string, dtype: DataType, shape: readonly Dim[]): Value {
    const v = new Value(this.claim(name), dtype, shape, undefined);
    this.inputs.push(v);
    return v;
  }

  /** A constant tensor stored in the model (weights, encodings, shape vectors). */
  initializer(name: string, tensor: HostTensor): Value {
    const v = new Value(this.fresh(name), tensor.dtype, tensor.dims, undefined);
    this.initializers.push({ value: v, tensor });
    return v;
  }

  /** Marks `value` as a graph output under `name` (an Identity is inserted when the name differs). */
  output(value: Value, name?: string): Value {
    let out = value;
    if (name !== undefined && name !== value.name) {
      out = this.node('Identity', [value], {}, { name })[0]!;
      if (out.name !== name) throw new GraphError(`output name "${name}" is already used in graph ${this.name}`);
    }
    this.outputs.push(out);
    return out;
  }

  node(
    opType: string,
    inputs: readonly (Value | null)[],
    attributes: Record<string, Attribute> = {},
    options: NodeOptions = {},
  ): Value[] {
    const count = options.outputs ?? 1;
    const base = options.name ?? opType;
    const nodeName = this.fresh(`${base}_node`);
    // Where's first input is the boolean condition; its outputs take the type of the values.
    const firstInput = opType === 'Where' ? (inputs[1] ?? undefined) : inputs.find((v): v is Value => v !== null);
    const outputs: Value[] = [];
    const node: GraphNode = {
      name: nodeName,
      opType,
      domain: options.domain ?? '',
      inputs,
      outputs,
      attributes,
    };
    const shapes = options.shapes ?? (node.domain === '' ? inferShapes(this, opType, inputs, attributes, count) : []);
    for (let i = 0; i < count; i++) {
      const dtype = options.dtypes?.[i] ?? firstInput?.dtype ?? 'float32';
      const outName = count === 1 ? this.fresh(base) : this.fresh(`${base}_${i}`);
      outputs.push(new Value(outName, dtype, shapes[i], node));
    }
    this.nodes.push(node);
    return outputs;
  }

  /** Single-output shorthand for `node`. */
  op(opType: string, inputs: readonly (Value | null)[], attributes: Record<string, Attribute> = {}, options: NodeOptions = {}): Value {
    return this.node(opType, inputs, attributes, { ...options, outputs: 1 })[0]!;
  }

  initializerOf(value: Value): HostTensor | undefined {
    return this.initializers.find((i) => i.value === value)?.tensor;
  }
}
