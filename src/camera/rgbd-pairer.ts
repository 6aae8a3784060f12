/**
 * Pairs colour and depth frames of an RGB-D source. Pure: no timers, no GStreamer; the caller pushes
 * frames (and, in `time` mode, may pass the current time and poll) and gets back finished pairs.
 *
 * The rule is never to pair frames that may not belong together; a dropped frame costs one inspection,
 * a mismatched pair scores one part with another part's depth.
 *
 * - `order`: by frame index, counted from the first frame after construction or `reset()` on each
 *   stream (file sources: image k of the colour folder with image k of the depth folder).
 * - `time`: by `capturedAt`. The binding gives no PTS, so arrival time is all there is. A colour and a
 *   depth frame are paired only when each is the *only* frame of the other stream within `toleranceMs`.
 *   With a tolerance under half the frame interval that is exactly "the nearest frame within tolerance";
 *   when two candidates fall inside the tolerance (streams half a frame apart, or a tolerance too wide
 *   for the frame rate) the nearest one is a coin toss, so the frame is dropped and counted as
 *   `ambiguous` instead of guessed.
 */
import type { Frame } from './frame.js';

export type PairBy = 'time' | 'order';
export type StreamName = 'colour' | 'depth';

export interface PairerOptions {
  pairBy: PairBy;
  /** `time` mode: frames further apart than this (ms) are never a pair. */
  toleranceMs: number;
  /** Frames kept waiting for a partner per stream; beyond this the oldest is dropped (memory bound). */
  maxPending?: number;
}

export interface FramePair {
  colour: Frame;
  depth: Frame;
}

export interface PairerCounters {
  paired: number;
  droppedColour: number;
  droppedDepth: number;
  /** Drops (included in the two above) because two partners were within tolerance. */
  ambiguous: number;
}

interface TimedEntry {
  frame: Frame;
  state: 'pending' | 'paired' | 'dropped';
}

/** Per stream in `time` mode: recent frames, decided ones kept while they still count as candidates. */
interface TimedStream {
  entries: TimedEntry[];
  lastAt: number;
}

interface OrderedStream {
  /** Index of this stream's first frame since construction or reset. */
  base: number | undefined;
  lastKey: number;
  /** key (index - base) → frame, in increasing key order. */
  pending: Map<number, Frame>;
}

export class FramePairer {
  private readonly tolerance: number;
  private readonly maxPending: number;
  private readonly counts: PairerCounters = { paired: 0, droppedColour: 0, droppedDepth: 0, ambiguous: 0 };
  private timed!: Record<StreamName, TimedStream>;
  private ordered!: Record<StreamName, OrderedStream>;
  /** Latest `now` given: no frame pushed later can have been captured before it. */
  private clock = -Infinity;

  constructor(readonly options: PairerOptions) {
    if (!(options.toleranceMs > 0)) throw new RangeError(`toleranceMs must be positive, got ${options.toleranceMs}`);
    this.tolerance = options.toleranceMs;
    this.maxPending = options.maxPending ?? 8;
    if (!(this.maxPending >= 1)) throw new RangeError(`maxPending must be at least 1, got ${this.maxPending}`);
    this.clear();
  }

  get counters(): PairerCounters {
    return { ...this.counts };
  }

  /** Frames currently waiting for a partner. */
  get pending(): { colour: number; depth: number } {
    if (this.options.pairBy === 'order') {
      return { colour: this.ordered.colour.pending.size, depth: this.ordered.depth.pending.size };
    }
    const count = (s: TimedStream) => s.entries.filter((e) => e.state === 'pending').length;
    return { colour: count(this.timed.colour), depth: count(this.timed.depth) };
  }

  pushColour(frame: Frame, now?: number): FramePair[] {
    return this.push('colour', frame, now);
  }

  pushDepth(frame: Frame, now?: number): FramePair[] {
    return this.push('depth', frame, now);
  }

  /**
   * Adds a frame; frames of one stream must come in capture order. `now` (time mode, optional): the
   * current performance.now(); it lets frames be decided as soon as their tolerance window has passed
   * instead of when the next frame of the other stream arrives.
   */
  push(stream: StreamName, frame: Frame, now?: number): FramePair[] {
    return this.options.pairBy === 'order' ? this.pushOrdered(stream, frame) : this.pushTimed(stream, frame, now);
  }

  /** Time mode: decides frames whose tolerance window has passed by `now`. */
  poll(now: number): FramePair[] {
    if (this.options.pairBy === 'order') return [];
    this.clock = Math.max(this.clock, now);
    return this.decideTimed();
  }

  /** Time mode: the time after which `poll` can decide a waiting frame (undefined: nothing waits on time). */
  nextDecisionAt(): number | undefined {
    if (this.options.pairBy === 'order') return undefined;
    let earliest: number | undefined;
    for (const [stream, other] of [['colour', 'depth'], ['depth', 'colour']] as const) {
      for (const entry of this.timed[stream].entries) {
        if (entry.state !== 'pending' || this.windowClosed(entry.frame, other)) continue;
        const closesAt = entry.frame.capturedAt + this.tolerance;
        earliest = earliest === undefined ? closesAt : Math.min(earliest, closesAt);
      }
    }
    return earliest;
  }

  /**
   * Forgets every waiting frame (counted as dropped) and, in order mode, restarts the numbering: the
   * next frame of each stream is number 0 again. For when one or both streams restart from their
   * first image.
   */
  reset(): void {
    const { colour, depth } = this.pending;
    this.counts.droppedColour += colour;
    this.counts.droppedDepth += depth;
    this.clear();
  }

  private clear(): void {
    this.timed = { colour: { entries: [], lastAt: -Infinity }, depth: { entries: [], lastAt: -Infinity } };
    this.ordered = {
      colour: { base: undefined, lastKey: -Infinity, pending: new Map() },
      depth: { base: undefined, lastKey: -Infinity, pending: new Map() },
    };
    this.clock = -Infinity;
  }

  private countDrop(stream: StreamName, ambiguous = false): void {
    if (stream === 'colour') this.counts.droppedColour++;
    else this.counts.droppedDepth++;
    if (ambiguous) this.counts.ambiguous++;
  }

  private makePair(stream: StreamName, frame: Frame, partner: Frame): FramePair {
    this.counts.paired++;
    return stream === 'colour' ? { colour: frame, depth: partner } : { colour: partner, depth: frame };
  }

  // ---- order mode -------------------------------------------------------------------------------

  private pushOrdered(stream: StreamName, frame: Frame): FramePair[] {
    const own = this.ordered[stream];
    const other = this.ordered[otherStream(stream)];
    own.base ??= frame.index;
    const key = frame.index - own.base;
    if (key <= own.lastKey) {
      this.countDrop(stream);
      return [];
    }
    own.lastKey = key;
    // This stream has moved past these numbers: the waiting frames of the other one can never pair.
    for (const waitingKey of other.pending.keys()) {
      if (waitingKey >= key) break;
      other.pending.delete(waitingKey);
      this.countDrop(otherStream(stream));
    }
    const partner = other.pending.get(key);
    if (partner) {
      other.pending.delete(key);
      return [this.makePair(stream, frame, partner)];
    }
    if (other.lastKey > key) {
      // The other stream already passed this number without it (a frame lost there).
      this.countDrop(stream);
      return [];
    }
    own.pending.set(key, frame);
    if (own.pending.size > this.maxPending) {
      own.pending.delete(own.pending.keys().next().value!);
      this.countDrop(stream);
    }
    return [];
  }

  // ---- time mode --------------------------------------------------------------------------------

  private pushTimed(stream: StreamName, frame: Frame, now: number | undefined): FramePair[] {
    if (now !== undefined) this.clock = Math.max(this.clock, now);
    const own = this.timed[stream];
    if (frame.capturedAt < own.lastAt) {
      // Out of order within a stream would break the "later frames are further away" reasoning.
      this.countDrop(stream);
      return this.decideTimed();
    }
    own.lastAt = frame.capturedAt;
    own.entries.push({ frame, state: 'pending' });
    const waiting = own.entries.filter((e) => e.state === 'pending');
    for (let i = 0; i < waiting.length - this.maxPending; i++) {
      waiting[i]!.state = 'dropped';
      this.countDrop(stream);
    }
    return this.decideTimed();
  }

  /** True when no frame of `other` that is yet to come can fall within tolerance of `frame`. */
  private windowClosed(frame: Frame, other: StreamName): boolean {
    return Math.max(this.timed[other].lastAt, this.clock) > frame.capturedAt + this.tolerance;
  }

  /** Every frame of `other` seen (paired, dropped or waiting) within tolerance of `frame`. */
  private candidates(frame: Frame, other: StreamName): TimedEntry[] {
    return this.timed[other].entries.filter((e) => Math.abs(e.frame.capturedAt - frame.capturedAt) <= this.tolerance);
  }

  private decideTimed(): FramePair[] {
    const pairs: FramePair[] = [];
    for (let progress = true; progress; ) {
      progress = false;
      for (const stream of ['colour', 'depth'] as const) {
        const other = otherStream(stream);
        // Oldest first: if its window is still open, every later frame's window is too.
        const entry = this.timed[stream].entries.find((e) => e.state === 'pending');
        if (!entry || !this.windowClosed(entry.frame, other)) continue;
        const candidates = this.candidates(entry.frame, other);
        if (candidates.length !== 1 || candidates[0]!.state !== 'pending') {
          // No partner, two of them, or its only partner is already gone.
          entry.state = 'dropped';
          this.countDrop(stream, candidates.length > 1);
          progress = true;
          continue;
        }
        const partner = candidates[0]!;
        if (!this.windowClosed(partner.frame, stream)) continue; // is this frame the partner's only one?
        if (this.candidates(partner.frame, stream).length === 1) {
          entry.state = 'paired';
          partner.state = 'paired';
          pairs.push(this.makePair(stream, entry.frame, partner.frame));
        } else {
          entry.state = 'dropped';
          this.countDrop(stream, true);
        }
        progress = true;
      }
    }
    this.forgetOldEntries();
    return pairs;
  }

  /**
   * Keeps decided frames only while a frame still to be decided could count them as a candidate, so
   * the history stays a few frames long.
   */
  private forgetOldEntries(): void {
    for (const stream of ['colour', 'depth'] as const) {
      const other = this.timed[otherStream(stream)];
      const firstWaiting = other.entries.find((e) => e.state === 'pending');
      // The earliest capture time a frame of the other stream still to be decided can have.
      const floor = firstWaiting ? firstWaiting.frame.capturedAt : Math.max(other.lastAt, this.clock);
      const own = this.timed[stream];
      own.entries = own.entries.filter((e) => e.state === 'pending' || e.frame.capturedAt >= floor - this.tolerance);
      // Hard bound for the case where the other stream has sent nothing yet (no floor to go by).
      let excess = own.entries.length - 4 * this.maxPending;
      own.entries = own.entries.filter((e) => excess <= 0 || e.state === 'pending' || (excess--, false));
    }
  }
}

function otherStream(stream: StreamName): StreamName {
  return stream === 'colour' ? 'depth' : 'colour';
}
