/** NumPy .npy (format 1.0/2.0/3.0, little-endian, C order): features in, anomaly maps out. */
import { tensor, tensorBytes, typedArrayFromBytes, type DataType, type HostTensor } from '../onnx/tensor.js';

export class NpyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NpyError';
  }
}

const DESCR: Record<string, DataType> = { '<f4': 'float32', '<i8': 'int64', '<i4': 'int32', '|u1': 'uint8', '|b1': 'bool' };

export function decodeNpy(bytes: Uint8Array, source = '.npy data'): HostTensor {
  const magic = String.fromCharCode(...bytes.subarray(0, 6));
  if (magic !== '\x93NUMPY') throw new NpyError(`${source}: not a NumPy .npy file (bad magic)`);
  const major = bytes[6]!;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || !fortran || shapeText === undefined) throw new NpyError(`${source}: unreadable header ${header.trim()}`);
  const dtype = DESCR[descr];
  if (!dtype) throw new NpyError(`${source}: dtype ${descr} is not supported (expected float32 '<f4')`);
  if (fortran === 'True') throw new NpyError(`${source}: Fortran-order arrays are not supported; save with np.ascontiguousarray`);
  const dims = shapeText.split(',').map((s) => s.trim()).filter((s) => s.length > 0).map(Number);
  const body = bytes.subarray(start + headerLen);
  try {
    return tensor(dtype, dims, typedArrayFromBytes(dtype, body));
  } catch (e) {
    throw new NpyError(`${source}: data does not match shape (${dims.join(', ')}): ${(e as Error).message}`);
  }
}

export function encodeNpy(t: HostTensor): Uint8Array {
  const descr = Object.entries(DESCR).find(([, d]) => d === t.dtype)?.[0];
  if (!descr) throw new NpyError(`cannot write ${t.dtype} as .npy`);
  const shape = t.dims.length === 1 ? `(${t.dims[0]},)` : `(${t.dims.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const data = tensorBytes(t);
  const out = new Uint8Array(10 + header.length + data.byteLength);
  out.set([0x93, ...new TextEncoder().encode('NUMPY'), 1, 0]);
  new DataView(out.buffer).setUint16(8, header.length, true);
  out.set(new TextEncoder().encode(header), 10);
  out.set(data, 10 + header.length);
  return out;
}
