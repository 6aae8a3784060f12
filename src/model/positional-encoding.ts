/**
 * The 2-D sin/cos positional encoding that conditions teacher and student.
 * Layout (parity with the authors' code): channels [0, D/2) encode the column (width) coordinate,
 * channels [D/2, D) the row (height) coordinate; within each half, even channels hold sin and odd
 * channels cos, at frequencies exp(−k·ln(10⁴)/(D/2)) for k = 0, 2, 4, …
 */
import { f32, type HostTensor } from '../onnx/tensor.js';

export function positionalEncoding(channels: number, height: number, width: number): HostTensor<'float32'> {
  if (channels % 4 !== 0) throw new Error(`positional encoding needs a multiple of 4 channels, got ${channels}`);
  const half = channels / 2;
  const out = f32([channels, height, width]);
  const data = out.data;
  const plane = height * width;
  for (let k = 0; k < half; k += 2) {
    const freq = Math.exp((-k * Math.log(10000)) / half);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const p = y * width + x;
        data[k * plane + p] = Math.sin(x * freq);
        data[(k + 1) * plane + p] = Math.cos(x * freq);
        data[(half + k) * plane + p] = Math.sin(y * freq);
        data[(half + k + 1) * plane + p] = Math.cos(y * freq);
      }
    }
  }
  return out;
}
