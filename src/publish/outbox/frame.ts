/**
 * The outbox's on-disk record ("frame"), shared by segment files (entries) and ack files (removals):
 *
 *   offset  size  field
 *   0       4     magic 0xFE 0x4F 0x42 0x31 ("\xFEOB1"; 0xFE never occurs in UTF-8 text)
 *   4       4     CRC-32 (IEEE) of bytes [8, 12 + bodyLength): the length field and the body
 *   8       4     bodyLength, uint32 LE
 *   12      n     body; its first byte is the record kind
 *
 * Entry body (kind 1), little-endian:
 *   0 u8 kind = 1 | 1 u8 reserved 0 | 2 u16 topic byte length | 4 u32 reserved 0 |
 *   8 f64 id | 16 f64 enqueuedAt (epoch ms) | 24 topic (UTF-8) | payload (JSON, UTF-8) to the end
 * Removal body (kind 2):
 *   0 u8 kind = 2 | 1 u8 reason (1 acked, 2 dropped for age; 3 for size is reserved: those drops delete
 *   whole segments) | 2 u16 reserved 0 |
 *   4 u32 count | 8 f64 id × count
 *
 * A frame is valid only if its magic, length and checksum all agree, so a torn last write (power cut) or a
 * flipped bit is detected and never mis-parsed. `scanFrames` walks a file and resynchronises on the next
 * magic that starts a valid frame after a bad region; a bad region with no valid frame after it is the torn
 * tail, which the caller truncates.
 */
import { crc32 } from './crc32.js';

export const MAGIC = Buffer.from([0xfe, 0x4f, 0x42, 0x31]);
const MAGIC_U32 = MAGIC.readUInt32LE(0);
export const FRAME_HEADER_BYTES = 12;

export const KIND_ENTRY = 1;
export const KIND_REMOVAL = 2;
export const ENTRY_FIXED_BYTES = 24;
const REMOVAL_FIXED_BYTES = 8;

export const REMOVAL_REASONS = { acked: 1, age: 2, size: 3 } as const;
export type RemovalReason = keyof typeof REMOVAL_REASONS;

/** Topic length is stored in 16 bits, which is also MQTT's limit. */
export const MAX_TOPIC_BYTES = 0xffff;

function seal(frame: Buffer): Buffer {
  frame.set(MAGIC, 0);
  frame.writeUInt32LE(frame.length - FRAME_HEADER_BYTES, 8);
  frame.writeUInt32LE(crc32(frame.subarray(8)), 4);
  return frame;
}

export function entryFrameBytes(topicBytes: number, payloadBytes: number): number {
  return FRAME_HEADER_BYTES + ENTRY_FIXED_BYTES + topicBytes + payloadBytes;
}

export function encodeEntry(id: number, enqueuedAt: number, topic: string, payloadJson: string): Buffer {
  const topicBytes = Buffer.byteLength(topic);
  const payloadBytes = Buffer.byteLength(payloadJson);
  const frame = Buffer.allocUnsafe(entryFrameBytes(topicBytes, payloadBytes));
  const b = FRAME_HEADER_BYTES;
  frame.writeUInt8(KIND_ENTRY, b);
  frame.writeUInt8(0, b + 1);
  frame.writeUInt16LE(topicBytes, b + 2);
  frame.writeUInt32LE(0, b + 4);
  frame.writeDoubleLE(id, b + 8);
  frame.writeDoubleLE(enqueuedAt, b + 16);
  frame.write(topic, b + ENTRY_FIXED_BYTES, topicBytes, 'utf8');
  frame.write(payloadJson, b + ENTRY_FIXED_BYTES + topicBytes, payloadBytes, 'utf8');
  return seal(frame);
}

export function encodeRemoval(reason: RemovalReason, ids: readonly number[]): Buffer {
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + REMOVAL_FIXED_BYTES + 8 * ids.length);
  const b = FRAME_HEADER_BYTES;
  frame.writeUInt8(KIND_REMOVAL, b);
  frame.writeUInt8(REMOVAL_REASONS[reason], b + 1);
  frame.writeUInt16LE(0, b + 2);
  frame.writeUInt32LE(ids.length, b + 4);
  for (let i = 0; i < ids.length; i++) frame.writeDoubleLE(ids[i], b + REMOVAL_FIXED_BYTES + 8 * i);
  return seal(frame);
}

/** End offset of the valid frame starting at `pos`, or -1. */
export function frameEndAt(buf: Buffer, pos: number): number {
  if (pos + FRAME_HEADER_BYTES > buf.length || buf.readUInt32LE(pos) !== MAGIC_U32) return -1;
  const end = pos + FRAME_HEADER_BYTES + buf.readUInt32LE(pos + 8);
  if (end > buf.length) return -1;
  return crc32(buf.subarray(pos + 8, end)) === buf.readUInt32LE(pos + 4) ? end : -1;
}

export interface ScannedFrame {
  offset: number;
  end: number;
}

export interface ScanResult {
  frames: ScannedFrame[];
  /** Bad regions followed by a valid frame: skipped, the rest of the file is kept. */
  corrupt: { offset: number; bytes: number }[];
  /** Where the valid data ends; bytes after it (a torn or garbage tail) are to be truncated. */
  validEnd: number;
}

export function scanFrames(buf: Buffer): ScanResult {
  const frames: ScannedFrame[] = [];
  const corrupt: ScanResult['corrupt'] = [];
  let pos = 0;
  while (pos < buf.length) {
    const end = frameEndAt(buf, pos);
    if (end >= 0) {
      frames.push({ offset: pos, end });
      pos = end;
      continue;
    }
    const next = nextValidFrame(buf, pos + 1);
    if (next < 0) break;
    corrupt.push({ offset: pos, bytes: next - pos });
    pos = next;
  }
  return { frames, corrupt, validEnd: pos };
}

function nextValidFrame(buf: Buffer, from: number): number {
  for (let at = buf.indexOf(MAGIC, from); at >= 0; at = buf.indexOf(MAGIC, at + 1)) {
    if (frameEndAt(buf, at) >= 0) return at;
  }
  return -1;
}

export interface EntryHeader {
  id: number;
  enqueuedAt: number;
  topicBytes: number;
}

/** The fixed part of an entry frame, or null when the (checksummed) body is not a well-formed entry. */
export function readEntryHeader(buf: Buffer, offset: number, end: number): EntryHeader | null {
  const b = offset + FRAME_HEADER_BYTES;
  if (end - b < ENTRY_FIXED_BYTES || buf.readUInt8(b) !== KIND_ENTRY) return null;
  const topicBytes = buf.readUInt16LE(b + 2);
  const id = buf.readDoubleLE(b + 8);
  const enqueuedAt = buf.readDoubleLE(b + 16);
  if (b + ENTRY_FIXED_BYTES + topicBytes > end || !Number.isSafeInteger(id) || id < 0 || !Number.isFinite(enqueuedAt)) return null;
  return { id, enqueuedAt, topicBytes };
}

export interface DecodedEntry extends EntryHeader {
  topic: string;
  payload: unknown;
}

/** A whole entry frame (as written by `encodeEntry`), checksum verified; null when invalid. */
export function decodeEntryFrame(frame: Buffer): DecodedEntry | null {
  if (frameEndAt(frame, 0) !== frame.length) return null;
  const header = readEntryHeader(frame, 0, frame.length);
  if (!header) return null;
  const topicStart = FRAME_HEADER_BYTES + ENTRY_FIXED_BYTES;
  const topic = frame.toString('utf8', topicStart, topicStart + header.topicBytes);
  try {
    return { ...header, topic, payload: JSON.parse(frame.toString('utf8', topicStart + header.topicBytes)) };
  } catch {
    return null;
  }
}

export interface Removal {
  reason: number;
  ids: number[];
}

export function readRemoval(buf: Buffer, offset: number, end: number): Removal | null {
  const b = offset + FRAME_HEADER_BYTES;
  if (end - b < REMOVAL_FIXED_BYTES || buf.readUInt8(b) !== KIND_REMOVAL) return null;
  const count = buf.readUInt32LE(b + 4);
  if (end - b !== REMOVAL_FIXED_BYTES + 8 * count) return null;
  const ids: number[] = new Array(count);
  for (let i = 0; i < count; i++) ids[i] = buf.readDoubleLE(b + REMOVAL_FIXED_BYTES + 8 * i);
  return { reason: buf.readUInt8(b + 1), ids };
}
