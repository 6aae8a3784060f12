/**
 * The safetensors file format (8-byte little-endian header length, JSON header, raw little-endian data):
 * how reference PyTorch checkpoints reach the device and how bundles store weights.
 */
import { tensor, tensorBytes, typedArrayFromBytes, numel, BYTES_PER_ELEMENT, type DataType, type HostTensor } from '../onnx/tensor.js';

const DTYPES: Record<string, DataType> = { F32: 'float32', I64: 'int64', I32: 'int32', U8: 'uint8', I8: 'int8', BOOL: 'bool', F16: 'float16' };
const CODES = Object.fromEntries(Object.entries(DTYPES).map(([k, v]) => [v, k])) as Record<DataType, string>;

export class SafetensorsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SafetensorsError';
  }
}

export type TensorMap = Map<string, HostTensor>;

export function decodeSafetensors(bytes: Uint8Array, source = 'safetensors data'): TensorMap {
  if (bytes.byteLength < 8) throw new SafetensorsError(`${source}: too short to be a safetensors file`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > bytes.byteLength - 8) throw new SafetensorsError(`${source}: header length ${headerLen} exceeds the file`);
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>>;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)));
  } catch (e) {
    throw new SafetensorsError(`${source}: header is not JSON (${(e as Error).message})`);
  }
  const body = bytes.subarray(8 + headerLen);
  const out: TensorMap = new Map();
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const { dtype: code, shape, data_offsets } = entry as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const dtype = DTYPES[code];
    if (!dtype) throw new SafetensorsError(`${source}: tensor "${name}" has unsupported dtype ${code}`);
    const [begin, end] = data_offsets;
    if (!(begin >= 0 && end <= body.byteLength && end - begin === numel(shape) * BYTES_PER_ELEMENT[dtype])) {
      throw new SafetensorsError(`${source}: tensor "${name}" has data offsets [${begin}, ${end}] inconsistent with shape [${shape}] or file size`);
    }
    out.set(name, tensor(dtype, shape, typedArrayFromBytes(dtype, body.subarray(begin, end))));
  }
  return out;
}

export function encodeSafetensors(tensors: TensorMap, metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  const names = [...tensors.keys()].sort();
  for (const name of names) {
    const t = tensors.get(name)!;
    const size = numel(t.dims) * BYTES_PER_ELEMENT[t.dtype];
    header[name] = { dtype: CODES[t.dtype], shape: t.dims, data_offsets: [offset, offset + size] };
    offset += size;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((json.length + 8) % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  out.set(headerBytes, 8);
  let pos = 8 + headerBytes.byteLength;
  for (const name of names) {
    const b = tensorBytes(tensors.get(name)!);
    out.set(b, pos);
    pos += b.byteLength;
  }
  return out;
}
