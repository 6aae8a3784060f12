/**
 * Training progress for people and machines: a one-line bar with ETA on a terminal, structured pino
 * lines (phase, epoch, step, loss, ETA) when headless — e.g. under systemd, where bars only clutter logs.
 */
import type { Logger } from 'pino';

export interface ProgressUpdate {
  phase: string;
  epoch: number;
  epochs: number;
  step: number;
  steps: number;
  loss: number;
}

export interface ProgressReporter {
  update(u: ProgressUpdate): void;
  message(text: string, fields?: Record<string, unknown>): void;
  done(): void;
}

function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

/** Seconds left, from the pace since `startedAt` (steps counted from `startStep`, so a resume is not "instant"). */
export function estimateRemaining(startedAt: number, now: number, startStep: number, step: number, steps: number): number {
  const done = step - startStep;
  if (done <= 0) return Number.POSITIVE_INFINITY;
  return ((now - startedAt) / 1000 / done) * (steps - step);
}

export function createProgress(logger: Logger, stream: NodeJS.WriteStream = process.stderr, everySteps = 20): ProgressReporter {
  const tty = stream.isTTY === true && process.env.CI === undefined;
  let phase = '';
  let startedAt = Date.now();
  let startStep = 0;
  let lastLogged = -1;
  return {
    update(u) {
      if (u.phase !== phase) {
        if (tty && phase) stream.write('\n');
        phase = u.phase;
        startedAt = Date.now();
        startStep = u.step;
      }
      const eta = estimateRemaining(startedAt, Date.now(), startStep, u.step, u.steps);
      if (tty) {
        const width = 30;
        const filled = Math.round((u.step / Math.max(1, u.steps)) * width);
        stream.write(
          `\r${u.phase.padEnd(8)} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] epoch ${u.epoch}/${u.epochs} step ${u.step}/${u.steps} loss ${u.loss.toFixed(4)} ETA ${formatDuration(eta)}   `,
        );
      } else if (u.step - lastLogged >= everySteps || u.step === u.steps) {
        lastLogged = u.step;
        logger.info({ phase: u.phase, epoch: u.epoch, epochs: u.epochs, step: u.step, steps: u.steps, loss: +u.loss.toFixed(6), etaSeconds: Math.round(eta) }, 'training progress');
      }
    },
    message(text, fields = {}) {
      if (tty) stream.write(`\n${text}\n`);
      else logger.info(fields, text);
    },
    done() {
      if (tty) stream.write('\n');
    },
  };
}
