/** Host-side tensors: a typed array plus its dims, the currency between model code, files and ONNX. */

export type DataType = 'float32' | 'int64' | 'int32' | 'uint8' | 'int8' | 'bool' | 'float16';

/** ONNX TensorProto.DataType codes. */
export const ONNX_DTYPE_CODE: Record<DataType, number> = {
  float32: 1,
  uint8: 2,
  int8: 3,
  int32: 6,
  int64: 7,
  bool: 9,
  float16: 10,
};

export function dataTypeFromCode(code: number): DataType {
  const found = (Object.entries(ONNX_DTYPE_CODE) as [DataType, number][]).find(([, c]) => c === code);
  if (!found) throw new Error(`unsupported ONNX tensor data type code ${code}`);
  return found[0];
}

export type TypedArrayOf<D extends DataType> = D extends 'float32'
  ? Float32Array
  : D extends 'int64'
    ? BigInt64Array
    : D extends 'int32'
      ? Int32Array
      : D extends 'int8'
        ? Int8Array
        : D extends 'float16'
          ? Uint16Array
          : Uint8Array;

export type AnyTypedArray = Float32Array | BigInt64Array | Int32Array | Int8Array | Uint8Array | Uint16Array;

export interface HostTensor<D extends DataType = DataType> {
  readonly dtype: D;
  readonly dims: readonly number[];
  readonly data: TypedArrayOf<D>;
}

export function numel(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

export function tensor<D extends DataType>(dtype: D, dims: readonly number[], data: TypedArrayOf<D>): HostTensor<D> {
  if (data.length !== numel(dims)) {
    throw new Error(`tensor data has ${data.length} elements but dims [${dims.join(', ')}] need ${numel(dims)}`);
  }
  return { dtype, dims: [...dims], data };
}

export function f32(dims: readonly number[], data?: ArrayLike<number>): HostTensor<'float32'> {
  return tensor('float32', dims, data ? Float32Array.from(data) : new Float32Array(numel(dims)));
}

export function i64(dims: readonly number[], data: ArrayLike<number | bigint>): HostTensor<'int64'> {
  const arr = new BigInt64Array(data.length);
  for (let i = 0; i < data.length; i++) arr[i] = BigInt(data[i]!);
  return tensor('int64', dims, arr);
}

/** Little-endian bytes of a tensor's data, as ONNX raw_data and safetensors store them. */
export function tensorBytes(t: HostTensor): Uint8Array {
  const d = t.data as AnyTypedArray;
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
}

export const BYTES_PER_ELEMENT: Record<DataType, number> = {
  float32: 4,
  int64: 8,
  int32: 4,
  uint8: 1,
  int8: 1,
  bool: 1,
  float16: 2,
};

/** Copies bytes (any alignment) into a fresh typed array of the given type. */
export function typedArrayFromBytes<D extends DataType>(dtype: D, bytes: Uint8Array): TypedArrayOf<D> {
  const size = BYTES_PER_ELEMENT[dtype];
  if (bytes.byteLength % size !== 0) throw new Error(`${bytes.byteLength} bytes is not a whole number of ${dtype}`);
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  const n = bytes.byteLength / size;
  switch (dtype) {
    case 'float32':
      return new Float32Array(copy.buffer, 0, n) as TypedArrayOf<D>;
    case 'int64':
      return new BigInt64Array(copy.buffer, 0, n) as TypedArrayOf<D>;
    case 'int32':
      return new Int32Array(copy.buffer, 0, n) as TypedArrayOf<D>;
    case 'int8':
      return new Int8Array(copy.buffer, 0, n) as TypedArrayOf<D>;
    case 'float16':
      return new Uint16Array(copy.buffer, 0, n) as TypedArrayOf<D>;
    default:
      return copy as TypedArrayOf<D>;
  }
}
