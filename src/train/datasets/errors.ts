/**
 * The one error type of the dataset layer. Every failure names the file or folder at fault, because the
 * person who reads it is standing in front of a folder tree (often on a device over SSH) and needs to know
 * which file to fix, not which function failed.
 */

export type DatasetErrorCode =
  /** A file or folder that must exist does not. */
  | 'missing'
  /** A folder that must hold images holds none (or a file is 0 bytes). */
  | 'empty'
  /** A file exists but cannot be read or decoded (permissions, corrupt, truncated, wrong format). */
  | 'unreadable'
  /** A defective test image has no ground-truth mask although the dataset has masks. */
  | 'missing-mask'
  /** The folder tree does not match the (detected or requested) layout. */
  | 'layout'
  /** A file decodes but its content is not what the layout promises (e.g. an 8-bit depth PNG). */
  | 'unsupported'
  /** A caller passed an impossible option (size 0, unknown class, …). */
  | 'invalid-option';

export class DatasetError extends Error {
  constructor(
    readonly code: DatasetErrorCode,
    /** The file or folder the error is about (absolute or as given by the caller). */
    readonly path: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'DatasetError';
  }
}

/** Short text of an unknown thrown value, for wrapping library errors (sharp, fs) into a DatasetError. */
export function describeCause(e: unknown): string {
  if (e instanceof Error) return e.message.split('\n')[0] ?? e.message;
  return String(e);
}
