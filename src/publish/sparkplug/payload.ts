/**
 * Sparkplug B payloads (Eclipse Sparkplug 3.0, chapter 6.4): encode and decode with the schema in
 * sparkplug_b.proto, loaded once at first use with protobufjs. 64-bit values (Int64, UInt64, aliases,
 * timestamps) are bigint on the way out of `decodePayload`, and accepted as bigint or safe-integer number
 * on the way in; Int64 travels in the unsigned `long_value` as two's complement, Int8..Int32 in the
 * unsigned `int_value` the same way. Data sets, templates and arrays are not needed by ast-edge and are
 * refused when encoding (decoded metrics of those kinds keep `value: undefined`).
 */
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

/** Metric and property value types, with their Sparkplug codes (sparkplug_b.proto `DataType`). */
export const DataType = {
  Unknown: 0,
  Int8: 1,
  Int16: 2,
  Int32: 3,
  Int64: 4,
  UInt8: 5,
  UInt16: 6,
  UInt32: 7,
  UInt64: 8,
  Float: 9,
  Double: 10,
  Boolean: 11,
  String: 12,
  DateTime: 13,
  Text: 14,
  UUID: 15,
  DataSet: 16,
  Bytes: 17,
  File: 18,
  Template: 19,
  PropertySet: 20,
  PropertySetList: 21,
} as const;
export type DataType = (typeof DataType)[keyof typeof DataType];

/** `null` is a metric without a value (`is_null`). Int64/UInt64 decode as bigint, DateTime as epoch ms. */
export type MetricValue = number | bigint | boolean | string | Uint8Array | null;
export type PropertyScalar = number | bigint | boolean | string | null;

export interface PropertyValue {
  type: DataType;
  value: PropertyScalar;
}
/** Metric properties (e.g. `engUnit`), scalar values only. */
export type PropertySet = Record<string, PropertyValue>;

export interface Metric {
  /** Required in births; data and commands may carry only the alias. */
  name?: string;
  alias?: bigint | number;
  /** ms since the epoch, UTC. */
  timestamp?: bigint | number;
  /** Required in births. Without it, a decoded value is read from whichever value field is set. */
  datatype?: DataType;
  value: MetricValue;
  isHistorical?: boolean;
  isTransient?: boolean;
  properties?: PropertySet;
}

export interface Payload {
  /** ms since the epoch, UTC. */
  timestamp?: bigint | number;
  metrics: Metric[];
  /** 0..255 on everything an edge node sends except NDEATH. */
  seq?: number;
  uuid?: string;
  body?: Uint8Array;
}

export interface DecodedMetric extends Omit<Metric, 'alias' | 'timestamp' | 'value'> {
  alias?: bigint;
  timestamp?: bigint;
  /** `undefined` for value kinds this module does not decode (data sets, templates, property sets). */
  value: MetricValue | undefined;
}

export interface DecodedPayload extends Omit<Payload, 'timestamp' | 'metrics'> {
  timestamp?: bigint;
  metrics: DecodedMetric[];
}

// ---- 64-bit helpers -------------------------------------------------------------------------------------

const U64_MAX = (1n << 64n) - 1n;

/** protobufjs writes any `{ low, high }` as a 64-bit varint; no Long class needed on the way in. */
interface Bits64 {
  low: number;
  high: number;
}

function toBits(value: bigint): Bits64 {
  const u = BigInt.asUintN(64, value);
  return { low: Number(u & 0xffff_ffffn), high: Number(u >> 32n) };
}

/** A decoded 64-bit field (Long, or number when protobufjs runs without long.js) as an unsigned bigint. */
function fromWire64(value: unknown): bigint {
  if (typeof value === 'number') return BigInt(value);
  if (typeof value === 'bigint') return BigInt.asUintN(64, value);
  if (typeof value === 'string') return BigInt.asUintN(64, BigInt(value));
  if (value && typeof value === 'object' && 'low' in value && 'high' in value) {
    const { low, high } = value as Bits64;
    return (BigInt(high >>> 0) << 32n) | BigInt(low >>> 0);
  }
  throw new TypeError(`not a 64-bit value: ${String(value)}`);
}

function integer(value: unknown, what: string): bigint {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number' && Number.isSafeInteger(value)) return BigInt(value);
  throw new TypeError(`${what}: expected an integer (safe number or bigint), got ${String(value)}`);
}

function inRange(value: bigint, min: bigint, max: bigint, what: string): bigint {
  if (value < min || value > max) throw new RangeError(`${what}: ${value} is outside ${min}..${max}`);
  return value;
}

function epochMs(value: unknown, what: string): bigint {
  if (value instanceof Date) {
    const ms = value.getTime();
    if (Number.isNaN(ms)) throw new RangeError(`${what}: invalid Date`);
    return BigInt(ms);
  }
  return inRange(integer(value, what), 0n, U64_MAX, what);
}

// ---- schema -----------------------------------------------------------------------------------------------

const PROTO_FILE = fileURLToPath(new URL('./sparkplug_b.proto', import.meta.url));
let payloadType: protobuf.Type | undefined;

function payloadMessage(): protobuf.Type {
  payloadType ??= protobuf.loadSync(PROTO_FILE).lookupType('org.eclipse.tahu.protobuf.Payload');
  return payloadType;
}

/** The value fields shared (under the same names) by Metric and PropertyValue. */
interface WireValue {
  intValue?: number;
  longValue?: Bits64 | unknown;
  floatValue?: number;
  doubleValue?: number;
  booleanValue?: boolean;
  stringValue?: string;
  bytesValue?: Uint8Array;
}

// ---- encode -----------------------------------------------------------------------------------------------

const INT_RANGE: Partial<Record<DataType, [bigint, bigint]>> = {
  [DataType.Int8]: [-0x80n, 0x7fn],
  [DataType.Int16]: [-0x8000n, 0x7fffn],
  [DataType.Int32]: [-0x8000_0000n, 0x7fff_ffffn],
  [DataType.UInt8]: [0n, 0xffn],
  [DataType.UInt16]: [0n, 0xffffn],
  [DataType.UInt32]: [0n, 0xffff_ffffn],
  [DataType.Int64]: [-(1n << 63n), (1n << 63n) - 1n],
  [DataType.UInt64]: [0n, U64_MAX],
};

/** Sets the one value field `datatype` travels in (Sparkplug 3.0, 6.4.16). `value` is not null here. */
function encodeValue(datatype: DataType, value: unknown, target: WireValue, what: string, allowBytes: boolean): void {
  const type = (expected: string): never => {
    throw new TypeError(`${what}: a ${datatypeName(datatype)} value must be ${expected}, got ${typeof value}`);
  };
  switch (datatype) {
    case DataType.Int8:
    case DataType.Int16:
    case DataType.Int32:
    case DataType.UInt8:
    case DataType.UInt16: {
      const [min, max] = INT_RANGE[datatype]!;
      // Signed values as their 32-bit two's complement in the unsigned field.
      target.intValue = Number(BigInt.asUintN(32, inRange(integer(value, what), min, max, what)));
      return;
    }
    case DataType.UInt32:
    case DataType.Int64:
    case DataType.UInt64: {
      const [min, max] = INT_RANGE[datatype]!;
      target.longValue = toBits(inRange(integer(value, what), min, max, what));
      return;
    }
    case DataType.DateTime:
      target.longValue = toBits(epochMs(value, what));
      return;
    case DataType.Float:
      if (typeof value !== 'number') type('a number');
      target.floatValue = value as number;
      return;
    case DataType.Double:
      if (typeof value !== 'number') type('a number');
      target.doubleValue = value as number;
      return;
    case DataType.Boolean:
      if (typeof value !== 'boolean') type('a boolean');
      target.booleanValue = value as boolean;
      return;
    case DataType.String:
    case DataType.Text:
    case DataType.UUID:
      if (typeof value !== 'string') type('a string');
      target.stringValue = value as string;
      return;
    case DataType.Bytes:
    case DataType.File:
      if (!allowBytes) break;
      if (!(value instanceof Uint8Array)) type('a Uint8Array');
      target.bytesValue = value as Uint8Array;
      return;
  }
  throw new TypeError(`${what}: data type ${datatypeName(datatype)} is not supported`);
}

function encodeProperties(properties: PropertySet, what: string): object {
  const keys = Object.keys(properties);
  return {
    keys,
    values: keys.map((key) => {
      const { type, value } = properties[key]!;
      const wire: WireValue & { type: number; isNull?: boolean } = { type };
      if (value === null) wire.isNull = true;
      else encodeValue(type, value, wire, `${what} property ${key}`, false);
      return wire;
    }),
  };
}

function encodeMetric(metric: Metric, index: number): object {
  const what = `metric ${metric.name ?? (metric.alias !== undefined ? `alias ${metric.alias}` : `#${index}`)}`;
  const wire: WireValue & Record<string, unknown> = {};
  if (metric.name !== undefined) wire.name = metric.name;
  if (metric.alias !== undefined) wire.alias = toBits(inRange(integer(metric.alias, what), 0n, U64_MAX, `${what} alias`));
  if (metric.timestamp !== undefined) wire.timestamp = toBits(epochMs(metric.timestamp, `${what} timestamp`));
  if (metric.datatype !== undefined) wire.datatype = metric.datatype;
  if (metric.isHistorical !== undefined) wire.isHistorical = metric.isHistorical;
  if (metric.isTransient !== undefined) wire.isTransient = metric.isTransient;
  if (metric.properties !== undefined) wire.properties = encodeProperties(metric.properties, what);
  if (metric.value === null) {
    wire.isNull = true;
  } else {
    if (metric.datatype === undefined) throw new TypeError(`${what}: a value needs a datatype`);
    encodeValue(metric.datatype, metric.value, wire, what, true);
  }
  return wire;
}

/** Encodes a payload; throws on values that do not fit their datatype. */
export function encodePayload(payload: Payload): Uint8Array {
  const wire: Record<string, unknown> = { metrics: payload.metrics.map(encodeMetric) };
  if (payload.timestamp !== undefined) wire.timestamp = toBits(epochMs(payload.timestamp, 'payload timestamp'));
  if (payload.seq !== undefined) wire.seq = toBits(inRange(integer(payload.seq, 'seq'), 0n, 255n, 'seq'));
  if (payload.uuid !== undefined) wire.uuid = payload.uuid;
  if (payload.body !== undefined) wire.body = payload.body;
  return payloadMessage().encode(wire).finish();
}

// ---- decode -----------------------------------------------------------------------------------------------

const has = (o: object, key: string): boolean => Object.prototype.hasOwnProperty.call(o, key);

/** The value of a decoded Metric or PropertyValue, read according to its datatype. */
function decodeValue(datatype: number | undefined, wire: WireValue): MetricValue | undefined {
  switch (datatype) {
    case undefined:
      // No datatype (allowed in data and commands): take whichever value field is present.
      if (has(wire, 'intValue')) return wire.intValue!;
      if (has(wire, 'longValue')) return fromWire64(wire.longValue);
      if (has(wire, 'floatValue')) return wire.floatValue!;
      if (has(wire, 'doubleValue')) return wire.doubleValue!;
      if (has(wire, 'booleanValue')) return wire.booleanValue!;
      if (has(wire, 'stringValue')) return wire.stringValue!;
      if (has(wire, 'bytesValue')) return wire.bytesValue!;
      return undefined;
    // Masked before sign extension, so zero-extended encodings from other implementations read the same.
    case DataType.Int8:
      return ((wire.intValue ?? 0) << 24) >> 24;
    case DataType.Int16:
      return ((wire.intValue ?? 0) << 16) >> 16;
    case DataType.Int32:
      return (wire.intValue ?? 0) | 0;
    case DataType.UInt8:
      return (wire.intValue ?? 0) & 0xff;
    case DataType.UInt16:
      return (wire.intValue ?? 0) & 0xffff;
    case DataType.UInt32:
      // Specified in long_value; some implementations use int_value.
      return has(wire, 'longValue') ? Number(fromWire64(wire.longValue) & 0xffff_ffffn) : (wire.intValue ?? 0) >>> 0;
    case DataType.Int64:
      return BigInt.asIntN(64, fromWire64(wire.longValue ?? 0));
    case DataType.UInt64:
      return fromWire64(wire.longValue ?? 0);
    case DataType.DateTime:
      return Number(fromWire64(wire.longValue ?? 0));
    case DataType.Float:
      return wire.floatValue ?? 0;
    case DataType.Double:
      return wire.doubleValue ?? 0;
    case DataType.Boolean:
      return wire.booleanValue ?? false;
    case DataType.String:
    case DataType.Text:
    case DataType.UUID:
      return wire.stringValue ?? '';
    case DataType.Bytes:
    case DataType.File:
      return wire.bytesValue ?? new Uint8Array(0);
    default:
      return undefined;
  }
}

type WireObject = WireValue & Record<string, unknown>;

function decodeProperties(wire: { keys?: string[]; values?: WireObject[] }): PropertySet {
  const properties: PropertySet = {};
  const keys = wire.keys ?? [];
  const values = wire.values ?? [];
  keys.forEach((key, i) => {
    const v = values[i];
    if (!v) return;
    const type = (v.type as number | undefined) ?? DataType.Unknown;
    const value = v.isNull === true ? null : decodeValue(type, v);
    // Nested property sets are not decoded.
    if (value === undefined || value instanceof Uint8Array) return;
    properties[key] = { type: type as DataType, value };
  });
  return properties;
}

function decodeMetric(wire: WireObject): DecodedMetric {
  const datatype = has(wire, 'datatype') ? (wire.datatype as DataType) : undefined;
  const metric: DecodedMetric = { value: wire.isNull === true ? null : decodeValue(datatype, wire) };
  if (has(wire, 'name')) metric.name = wire.name as string;
  if (has(wire, 'alias')) metric.alias = fromWire64(wire.alias);
  if (has(wire, 'timestamp')) metric.timestamp = fromWire64(wire.timestamp);
  if (datatype !== undefined) metric.datatype = datatype;
  if (has(wire, 'isHistorical')) metric.isHistorical = wire.isHistorical as boolean;
  if (has(wire, 'isTransient')) metric.isTransient = wire.isTransient as boolean;
  if (has(wire, 'properties') && wire.properties) metric.properties = decodeProperties(wire.properties as never);
  return metric;
}

/** Decodes a payload; throws on bytes that are not a Sparkplug B payload. */
export function decodePayload(bytes: Uint8Array): DecodedPayload {
  const wire = payloadMessage().decode(bytes) as unknown as WireObject;
  const payload: DecodedPayload = { metrics: ((wire.metrics as WireObject[] | undefined) ?? []).map(decodeMetric) };
  if (has(wire, 'timestamp')) payload.timestamp = fromWire64(wire.timestamp);
  if (has(wire, 'seq')) payload.seq = Number(fromWire64(wire.seq));
  if (has(wire, 'uuid')) payload.uuid = wire.uuid as string;
  if (has(wire, 'body')) payload.body = wire.body as Uint8Array;
  return payload;
}

export function datatypeName(code: number): string {
  return Object.entries(DataType).find(([, c]) => c === code)?.[0] ?? `DataType(${code})`;
}

// ---- typed metric constructors ----------------------------------------------------------------------------

/** Alias, timestamp and the other optional metric fields. */
export type MetricExtras = Omit<Metric, 'name' | 'datatype' | 'value'>;

function typed<V extends MetricValue>(datatype: DataType) {
  return (name: string | undefined, value: V | null, extras: MetricExtras = {}): Metric => ({
    ...(name === undefined ? {} : { name }),
    datatype,
    value,
    ...extras,
  });
}

/** `metric.int64('bdSeq', 3n)`; pass `undefined` as the name for alias-only data metrics. */
export const metric = {
  int32: typed<number>(DataType.Int32),
  int64: typed<bigint | number>(DataType.Int64),
  uint64: typed<bigint | number>(DataType.UInt64),
  float: typed<number>(DataType.Float),
  double: typed<number>(DataType.Double),
  boolean: typed<boolean>(DataType.Boolean),
  string: typed<string>(DataType.String),
  /** Epoch ms (number or bigint); a Date is converted. */
  dateTime: (name: string | undefined, value: Date | number | bigint | null, extras: MetricExtras = {}): Metric =>
    typed<number | bigint>(DataType.DateTime)(name, value instanceof Date ? value.getTime() : value, extras),
};

// ---- sequence numbers -------------------------------------------------------------------------------------

/**
 * The edge node's message sequence number: NBIRTH carries 0, and every later NDATA, DBIRTH, DDATA and
 * DDEATH the previous value plus one, wrapping from 255 to 0. NDEATH carries none.
 */
export class SeqCounter {
  private nextValue = 0;

  /** Starts a birth sequence: the next `take()` (for NBIRTH) returns 0. */
  reset(): void {
    this.nextValue = 0;
  }

  take(): number {
    const value = this.nextValue;
    this.nextValue = (value + 1) % 256;
    return value;
  }

  /** The value the next `take()` returns. */
  peek(): number {
    return this.nextValue;
  }
}
