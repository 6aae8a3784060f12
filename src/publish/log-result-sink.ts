/**
 * Results as structured log lines (always on: the journal of last resort when no broker is configured),
 * and the demo's one-line-per-part console view.
 */
import type { Logger } from 'pino';
import type { InspectionOutcome, ResultSink } from './result-sink.js';

export class LogResultSink implements ResultSink {
  readonly name = 'log';
  constructor(private readonly logger: Logger) {}
  async start(): Promise<void> {}
  publish({ record }: InspectionOutcome): void {
    const level = record.verdict === 'pass' ? 'debug' : 'info';
    this.logger[level]({ result: record }, `part ${record.seq} ${record.verdict}`);
  }
  async stop(): Promise<void> {}
}

/** `seq  part  VERDICT  score  normalised  latency` — what a line engineer watches during the demo. */
export function formatResultLine({ record: r }: InspectionOutcome): string {
  const verdict = r.verdict.toUpperCase().padEnd(6);
  const score = r.score === null ? '     -' : r.score.toFixed(3).padStart(6);
  const normalized = r.normalizedScore === null ? '    -' : r.normalizedScore.toFixed(3);
  const part = (r.partId ?? '-').padEnd(12);
  const why = r.reason ? `  (${r.reason})` : '';
  return `#${String(r.seq).padStart(5)}  ${part} ${verdict} score ${score}  normalised ${normalized}  ${r.latencyMs.toFixed(1).padStart(7)} ms${why}`;
}

export class ConsoleResultSink implements ResultSink {
  readonly name = 'console';
  constructor(private readonly write: (line: string) => void = (l) => process.stdout.write(l + '\n')) {}
  async start(): Promise<void> {}
  publish(outcome: InspectionOutcome): void {
    this.write(formatResultLine(outcome));
  }
  async stop(): Promise<void> {}
}
