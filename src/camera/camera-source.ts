/**
 * What the agent opens: one camera as configured, delivering colour frames, or colour frames with
 * their paired depth frames when `source.depth` is set. Wraps one or two GstFrameSources and, for
 * RGB-D, a FramePairer; forwards each stream's state so health can name the stream at fault.
 */
import type { Logger } from 'pino';
import type { Source } from '../config/agent-schema.js';
import { CameraError } from './camera-error.js';
import type { Frame } from './frame.js';
import { GstFrameSource, threadPoolAdvice, type SourceStatus } from './gst-frame-source.js';
import { isPrintfPattern, listFolderImages } from './image-sequence.js';
import { describeSource } from './launch-string.js';
import { FramePairer, type FramePair, type PairerCounters, type StreamName } from './rgbd-pairer.js';

/** A colour frame, and for RGB-D sources the depth frame paired with it. */
export interface CapturedFrame {
  colour: Frame;
  depth?: Frame;
}

/** Frames the camera layer dropped (RGB-D only: a frame that found no partner). */
export type DropReason = 'unpaired_colour' | 'unpaired_depth';

export interface CameraReport {
  description: string;
  mode: 'rgb' | 'rgbd';
  streams: SourceStatus[];
  /** Captures handed to onFrame listeners. */
  delivered: number;
  pairing?: PairerCounters;
}

export interface FrameSource {
  readonly description: string;
  readonly mode: 'rgb' | 'rgbd';
  onFrame(listener: (frame: CapturedFrame) => void): () => void;
  /** Every state change of every stream (`status.stream` says which). */
  onStatus(listener: (status: SourceStatus) => void): () => void;
  onDrop(listener: (reason: DropReason) => void): () => void;
  /** Throws a CameraError when the configuration cannot work; later failures are retried. */
  start(): void;
  /** Resolves when every pipeline is stopped; no listener is called after that. */
  stop(): Promise<void>;
  report(): CameraReport;
}

export interface OpenSourceOptions {
  /** See GstFrameSourceOptions: restart after this long without a frame. */
  stallMs?: number;
  startTimeoutMs?: number;
  /** RGB-D: frames waiting for a partner per stream. */
  maxPending?: number;
}

export function openSource(
  source: Source,
  size: { width: number; height: number },
  logger: Logger,
  options: OpenSourceOptions = {},
): FrameSource {
  return new CameraFrameSource(source, size, logger, options);
}

class CameraFrameSource implements FrameSource {
  readonly description: string;
  readonly mode: 'rgb' | 'rgbd';
  private readonly colour: GstFrameSource;
  private readonly depth: GstFrameSource | undefined;
  private readonly pairer: FramePairer | undefined;
  private readonly frameListeners = new Set<(frame: CapturedFrame) => void>();
  private readonly statusListeners = new Set<(status: SourceStatus) => void>();
  private readonly dropListeners = new Set<(reason: DropReason) => void>();
  private delivered = 0;
  private pollTimer: NodeJS.Timeout | undefined;
  private lastCounts: PairerCounters = { paired: 0, droppedColour: 0, droppedDepth: 0, ambiguous: 0 };
  private warnedAmbiguous = false;
  /** Order pairing of looping folders with different image counts would drift apart after one loop. */
  private misaligned = false;
  private stopped = false;

  constructor(
    private readonly source: Source,
    size: { width: number; height: number },
    private readonly logger: Logger,
    options: OpenSourceOptions,
  ) {
    const common = { reconnect: source.reconnect, stallMs: options.stallMs, startTimeoutMs: options.startTimeoutMs, logger };
    this.colour = new GstFrameSource({ ...common, source, stream: 'colour', output: { format: 'RGB', ...size } });
    this.mode = source.depth ? 'rgbd' : 'rgb';
    this.description = describeSource(source) + (source.depth ? ` + depth ${describeSource(source.depth)}` : '');
    if (source.depth) {
      // The depth stream has no reconnect settings of its own: it follows the colour stream's.
      this.depth = new GstFrameSource({ ...common, source: source.depth, stream: 'depth', output: { format: 'GRAY16_LE', ...size } });
      this.pairer = new FramePairer({
        pairBy: source.depth.pairBy,
        toleranceMs: source.depth.toleranceMs,
        maxPending: options.maxPending,
      });
      if (source.depth.pairBy === 'order' && (source.kind !== 'file' || source.depth.kind !== 'file')) {
        logger.warn(
          'depth.pairBy "order" assumes both streams deliver every frame (file sources); a live stream drops frames ' +
            'when the agent falls behind, which would shift the numbering: consider pairBy "time"',
        );
      }
    }
    this.wire();
  }

  onFrame(listener: (frame: CapturedFrame) => void): () => void {
    this.frameListeners.add(listener);
    return () => this.frameListeners.delete(listener);
  }

  onStatus(listener: (status: SourceStatus) => void): () => void {
    this.statusListeners.add(listener);
    return () => this.statusListeners.delete(listener);
  }

  onDrop(listener: (reason: DropReason) => void): () => void {
    this.dropListeners.add(listener);
    return () => this.dropListeners.delete(listener);
  }

  start(): void {
    const advice = threadPoolAdvice(this.depth ? 2 : 1);
    if (advice) this.logger.warn(advice);
    this.checkOrderPairingCounts();
    this.colour.start();
    try {
      this.depth?.start();
    } catch (error) {
      void this.colour.stop();
      throw error;
    }
  }

  async stop(): Promise<void> {
    if (!this.stopped) {
      this.stopped = true;
      clearTimeout(this.pollTimer);
    }
    await Promise.all([this.colour.stop(), this.depth?.stop()]);
    this.frameListeners.clear();
    this.statusListeners.clear();
    this.dropListeners.clear();
  }

  report(): CameraReport {
    return {
      description: this.description,
      mode: this.mode,
      streams: this.depth ? [this.colour.status, this.depth.status] : [this.colour.status],
      delivered: this.delivered,
      ...(this.pairer ? { pairing: this.pairer.counters } : {}),
    };
  }

  private wire(): void {
    this.colour.onState((status) => this.onStreamState(status));
    this.depth?.onState((status) => this.onStreamState(status));
    if (!this.pairer) {
      this.colour.onFrame((colour) => this.deliver({ colour }));
      return;
    }
    this.colour.onFrame((frame) => this.offer('colour', frame));
    this.depth!.onFrame((frame) => this.offer('depth', frame));
  }

  private offer(stream: StreamName, frame: Frame): void {
    if (this.misaligned) {
      const reason: DropReason = stream === 'colour' ? 'unpaired_colour' : 'unpaired_depth';
      for (const listener of this.dropListeners) this.safely(() => listener(reason));
      return;
    }
    this.handlePairs(this.pairer!.push(stream, frame, performance.now()));
  }

  /** Time pairing: decide waiting frames as soon as their tolerance window has passed. */
  private schedulePoll(): void {
    clearTimeout(this.pollTimer);
    const at = this.pairer!.nextDecisionAt();
    if (at === undefined || this.stopped) return;
    this.pollTimer = setTimeout(() => this.handlePairs(this.pairer!.poll(performance.now())), Math.max(0, at - performance.now()) + 1);
  }

  private handlePairs(pairs: FramePair[]): void {
    for (const pair of pairs) this.deliver(pair);
    this.emitDrops();
    this.schedulePoll();
  }

  private emitDrops(): void {
    const now = this.pairer!.counters;
    const emit = (reason: DropReason, count: number) => {
      for (let i = 0; i < count; i++) for (const listener of this.dropListeners) this.safely(() => listener(reason));
    };
    emit('unpaired_colour', now.droppedColour - this.lastCounts.droppedColour);
    emit('unpaired_depth', now.droppedDepth - this.lastCounts.droppedDepth);
    if (now.ambiguous > this.lastCounts.ambiguous && !this.warnedAmbiguous) {
      this.warnedAmbiguous = true;
      this.logger.warn(
        { toleranceMs: this.source.depth?.toleranceMs },
        'RGB-D frames dropped as ambiguous: two frames of the other stream were within the tolerance; keep ' +
          'depth.toleranceMs below half the frame interval and the two streams in step',
      );
    }
    this.lastCounts = now;
  }

  private deliver(frame: CapturedFrame): void {
    if (this.stopped) return;
    this.delivered++;
    for (const listener of this.frameListeners) this.safely(() => listener(frame));
  }

  private onStreamState(status: SourceStatus): void {
    if (this.pairer && this.depth && this.source.depth?.pairBy === 'order') this.keepOrderStreamsInStep(status);
    for (const listener of this.statusListeners) this.safely(() => listener(status));
  }

  /**
   * Pairing by order counts frames from each stream's start, so the two streams must restart
   * together: when one restarts on its own (error, end, stall), the other is restarted to come up at
   * the same moment and the numbering starts over.
   */
  private keepOrderStreamsInStep(status: SourceStatus): void {
    if (status.state === 'reconnecting' && status.cause !== 'restart') {
      const partner = status.stream === 'colour' ? this.depth! : this.colour;
      partner.restart(`the ${status.stream} stream restarts (pairing by order)`, status.retryInMs ?? 0);
      this.pairer!.reset();
      this.emitDrops();
    }
    if (status.state === 'running') this.checkStagedCounts();
  }

  private checkStagedCounts(): void {
    const depth = this.source.depth;
    if (this.source.kind !== 'file' || depth?.kind !== 'file' || !(this.source.loop || depth.loop)) return;
    const colourImages = this.colour.status.images;
    const depthImages = this.depth!.status.images;
    const misaligned = colourImages !== undefined && depthImages !== undefined && colourImages !== depthImages;
    if (misaligned && !this.misaligned) {
      this.pairer!.reset();
      this.emitDrops();
      this.logger.error(
        { colourImages, depthImages },
        'looping colour and depth folders hold different numbers of images: pairing by order stopped until they match',
      );
    }
    this.misaligned = misaligned;
  }

  /** Refuses, before anything starts, looping folders that cannot stay in step. */
  private checkOrderPairingCounts(): void {
    const depth = this.source.depth;
    if (depth?.pairBy !== 'order' || this.source.kind !== 'file' || depth.kind !== 'file') return;
    if (!(this.source.loop || depth.loop) || isPrintfPattern(this.source.path) || isPrintfPattern(depth.path)) return;
    const colourCount = listFolderImages(this.source.path, this.colour.description).files.length;
    const depthCount = listFolderImages(depth.path, this.depth!.description).files.length;
    if (colourCount !== depthCount) {
      throw new CameraError(
        `pairing by order needs as many depth images as colour images in looping folders (colour ${colourCount}, depth ${depthCount})`,
        this.description,
        'input',
      );
    }
  }

  private safely(call: () => void): void {
    try {
      call();
    } catch (error) {
      this.logger.error({ err: error }, 'a camera listener threw');
    }
  }
}
