/**
 * `cmd/capture`: the next N inspected frames saved as PNG good samples under `<stateDir>/captures/<label>/`,
 * so an engineer can fine-tune on this line's parts (`ast-agent train --from <bundle> --data <folder>`).
 * A result sink: it sees every outcome, and only writes while armed. Writes happen off the loop; a failed
 * write is logged and counted, never thrown.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import sharp from 'sharp';
import type { InspectionOutcome, ResultSink } from '../publish/result-sink.js';

interface Session {
  folder: string;
  remaining: number;
  saved: number;
  onlyPass: boolean;
}

export class FrameCapture implements ResultSink {
  readonly name = 'capture';
  private session: Session | null = null;
  private writes: Promise<unknown> = Promise.resolve();
  failures = 0;

  constructor(private readonly root: string, private readonly logger: Logger) {}

  async start(): Promise<void> {}

  /** Arms a capture; a running one is replaced. Resolves once the folder exists. */
  async arm(options: { count: number; label?: string; onlyPass: boolean }): Promise<{ folder: string; count: number }> {
    const label = options.label ?? new Date().toISOString().replace(/[:.]/g, '-');
    const folder = join(this.root, label);
    await mkdir(folder, { recursive: true });
    this.session = { folder, remaining: options.count, saved: 0, onlyPass: options.onlyPass };
    this.logger.info({ folder, count: options.count }, 'capturing frames as good samples');
    return { folder, count: options.count };
  }

  get status(): { folder: string; remaining: number; saved: number } | null {
    return this.session && { folder: this.session.folder, remaining: this.session.remaining, saved: this.session.saved };
  }

  publish({ record, frame }: InspectionOutcome): void {
    const s = this.session;
    if (!s || s.remaining <= 0 || !frame) return;
    if (s.onlyPass && record.verdict !== 'pass') return;
    s.remaining--;
    const file = join(s.folder, `${String(record.seq).padStart(9, '0')}.png`);
    // The frame buffer belongs to the camera; copy it before the write goes async.
    const pixels = Buffer.from(frame.data);
    this.writes = this.writes.then(() =>
      sharp(pixels, { raw: { width: frame.width, height: frame.height, channels: 3 } })
        .png()
        .toFile(file)
        .then(
          () => {
            s.saved++;
            if (s.remaining === 0 && s.saved > 0) this.logger.info({ folder: s.folder, saved: s.saved }, 'capture finished');
          },
          (e: Error) => {
            this.failures++;
            this.logger.error({ err: e, file }, 'could not save a captured frame');
          },
        ),
    );
  }

  async stop(): Promise<void> {
    await this.writes;
  }
}
