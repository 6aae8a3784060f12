/** The one error type the outbox throws or rejects with. */

export type OutboxErrorKind =
  /** The outbox was closed. */
  | 'closed'
  /** Another live process (or another instance in this process) holds the folder's lock. */
  | 'locked'
  /** The entry cannot fit within the configured bounds. */
  | 'too-large'
  /** The topic or payload cannot be journaled (not JSON-serialisable, topic too long...). */
  | 'invalid'
  /** A file operation failed (disk full, I/O error, permissions): the entry is not durable. */
  | 'io';

export class OutboxError extends Error {
  readonly kind: OutboxErrorKind;
  /** The file the failing operation was about, when there is one. */
  readonly file?: string;
  /** The system error code of the cause (`ENOSPC`, `EIO`, `EACCES`...), when there is one. */
  readonly code?: string;

  constructor(kind: OutboxErrorKind, message: string, options: { file?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'OutboxError';
    this.kind = kind;
    if (options.file !== undefined) this.file = options.file;
    const code = (options.cause as NodeJS.ErrnoException | undefined)?.code;
    if (typeof code === 'string') this.code = code;
  }
}

export function describeCause(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  const message = String(err?.message ?? e);
  return err?.code && !message.startsWith(err.code) ? `${err.code}: ${message}` : message;
}
