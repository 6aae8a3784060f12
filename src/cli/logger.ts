/**
 * Structured logs (pino, JSON) on stderr, so stdout stays for command results. `LOG_LEVEL` sets the
 * level; a terminal gets the same JSON lines, which `pino-pretty` can format if installed.
 */
import pino, { type Logger } from 'pino';

export function createLogger(name: string): Logger {
  return pino({ name, level: process.env.LOG_LEVEL ?? 'info', base: { pid: process.pid } }, pino.destination(2));
}
