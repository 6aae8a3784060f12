/**
 * The one thing the camera layer hands to the rest of the agent: a decoded, tightly packed image with
 * the moment it reached JavaScript. Nothing outside src/camera/ sees GStreamer buffers or caps.
 */

export type PixelFormat = 'RGB' | 'GRAY16_LE';

export interface Frame {
  format: PixelFormat;
  width: number;
  height: number;
  /**
   * RGB: width*height*3 bytes, tightly packed (GStreamer's row padding stripped); GRAY16_LE:
   * width*height*2 bytes, little-endian, starting at an even byteOffset so a Uint16Array view works.
   */
  data: Uint8Array;
  /** performance.now() when the appsink handed the buffer to JS (monotonic; the binding gives no PTS). */
  capturedAt: number;
  /** Date.now() at the same moment, for result timestamps. */
  capturedAtWall: number;
  /** 0,1,2… per source since it was created (not reset by reconnects). */
  index: number;
  /**
   * The frame's name when the source knows one: a folder source's image file name (it reads them in
   * order without skipping, so the n-th frame of a run is the n-th image). Continuous inspection uses
   * it as the part id, so a replayed folder gives results keyed by file.
   */
  label?: string;
}

export function bytesPerPixel(format: PixelFormat): number {
  return format === 'RGB' ? 3 : 2;
}

/**
 * Removes row padding from a raw video buffer. GStreamer's default video layout rounds every row up to
 * a multiple of 4 bytes (a 10-pixel RGB row is 30 bytes of pixels in a 32-byte stride; checked on
 * GStreamer 1.22), and the binding hands over the buffer without its stride, so the stride is
 * recovered from the buffer size. Returns the input itself when it is already packed (no copy).
 * Returns an error message instead of guessing when the size fits no layout.
 */
export function packRows(
  buffer: Uint8Array,
  width: number,
  height: number,
  format: PixelFormat,
): Uint8Array | { error: string } {
  const rowBytes = width * bytesPerPixel(format);
  const packedBytes = rowBytes * height;
  if (buffer.length === packedBytes) {
    // A Uint16Array view needs an even offset; a freshly copied Node buffer always starts at 0.
    return buffer.byteOffset % 2 === 0 ? buffer : buffer.slice();
  }
  const stride = buffer.length / height;
  if (!Number.isInteger(stride) || stride < rowBytes) {
    return { error: `a ${width}x${height} ${format} buffer has ${buffer.length} bytes, which fits no row stride` };
  }
  const packed = new Uint8Array(packedBytes);
  for (let y = 0; y < height; y++) {
    packed.set(buffer.subarray(y * stride, y * stride + rowBytes), y * rowBytes);
  }
  return packed;
}

/** A GRAY16_LE frame's pixels as numbers (a view, no copy; little-endian hosts only, i.e. x64 and arm64). */
export function depthValues(frame: Frame): Uint16Array {
  if (frame.format !== 'GRAY16_LE') throw new TypeError(`depthValues needs a GRAY16_LE frame, got ${frame.format}`);
  return new Uint16Array(frame.data.buffer, frame.data.byteOffset, frame.width * frame.height);
}
