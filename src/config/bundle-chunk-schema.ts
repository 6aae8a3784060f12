/**
 * One chunk of a bundle .tar sent over MQTT (for sites where the device cannot reach an HTTP server).
 * Chunks may arrive out of order or twice; every chunk but the last holds exactly `chunkBytes` bytes, so a
 * chunk's place in the file is index × chunkBytes and the receiver writes it there without buffering.
 */
import { z } from 'zod';

const HEX64 = z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex digits');

export const BundleChunkSchema = z
  .strictObject({
    /** Names the transfer (also the receiver's temp file name, hence the character set). */
    transferId: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'letters, digits, . _ - (max 64)'),
    index: z.int().min(0),
    count: z.int().min(1),
    /** Size of every chunk except the last, which holds the rest. */
    chunkBytes: z.int().min(1),
    totalBytes: z.int().min(1),
    /** sha256 of the whole .tar, checked once every chunk is in. */
    totalSha256: HEX64,
    /** sha256 of this chunk's bytes (after base64 decoding). */
    sha256: HEX64,
    data: z.base64('must be base64'),
  })
  .superRefine((c, ctx) => {
    if (c.index >= c.count) ctx.addIssue({ code: 'custom', path: ['index'], message: `is ${c.index} but count is ${c.count}` });
    const expected = Math.ceil(c.totalBytes / c.chunkBytes);
    if (c.count !== expected) {
      ctx.addIssue({ code: 'custom', path: ['count'], message: `is ${c.count} but ${c.totalBytes} bytes in chunks of ${c.chunkBytes} make ${expected}` });
    }
  })
  .describe('One chunk of a bundle .tar; all chunks of a transfer carry the same transferId, count, chunkBytes, totalBytes and totalSha256.');
export type BundleChunk = z.infer<typeof BundleChunkSchema>;

/** Bytes chunk `index` must hold. */
export function chunkLength(c: Pick<BundleChunk, 'index' | 'count' | 'chunkBytes' | 'totalBytes'>): number {
  return c.index < c.count - 1 ? c.chunkBytes : c.totalBytes - (c.count - 1) * c.chunkBytes;
}
