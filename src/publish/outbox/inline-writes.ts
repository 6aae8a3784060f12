/**
 * Where the outbox's writes run: on the event loop itself (a synchronous write) or on libuv's I/O thread
 * pool (an asynchronous one).
 *
 * A reject may be published only once it is durable, so the commit sits on its critical path. Handing the
 * write to the thread pool costs two thread wake-ups (pool thread, then the event loop again); on a busy
 * two-core device each can wait a scheduler slice, and that — not the disk — dominated the reject's p99
 * (bench/reject-latency.bench.ts, outbox on tmpfs: append to durable p99 3.2 ms through the pool, 1.3 ms
 * inline). A small
 * O_DSYNC write on an SSD or eMMC takes well under a millisecond, so writing inline is both faster and
 * cheaper. But a slow medium (an SD card mid-erase, a dying disk) can take tens of milliseconds, and
 * blocking the event loop that long would stall frames, deadlines and MQTT keep-alives. So: inline while
 * writes stay within a budget; writes that keep overrunning it (a few of the last twenty), or one that
 * overruns it tenfold, move writes to the thread pool for a while, after which inline is tried again. A
 * single slow write among many fast ones (a file-system journal commit, a noisy neighbour) is not a slow
 * medium, and switching for it would cost every reject of the next half minute its two thread hops.
 */
export interface InlineWriteOptions {
  /** Longest a write may block the event loop; 0 = never write inline. */
  budgetMs: number;
  /** How long writes stay on the thread pool after the switch. */
  backoffMs?: number;
  /** Monotonic clock, ms (a seam for tests). */
  now?: () => number;
}

export interface InlineWriteChange {
  inline: boolean;
  /** The write that caused the change, ms. */
  tookMs: number;
  /** Writes over the budget among the last WINDOW inline writes. */
  overrunsInWindow: number;
}

/** The last this many inline writes are looked at... */
const WINDOW = 20;
/** ...and this many of them over the budget mean the medium is slow. */
const OVERRUNS_IN_WINDOW = 3;
/** One write this many times over the budget is enough on its own. */
const STALL_FACTOR = 10;

export class InlineWritePolicy {
  private pooledUntil = -Infinity;
  /** Whether each of the last WINDOW inline writes overran, oldest first. */
  private recent: boolean[] = [];
  readonly budgetMs: number;
  private readonly backoffMs: number;
  private readonly now: () => number;
  /** Inline writes over the budget since start. */
  overruns = 0;

  constructor(options: InlineWriteOptions) {
    this.budgetMs = options.budgetMs;
    this.backoffMs = options.backoffMs ?? 30_000;
    this.now = options.now ?? (() => performance.now());
  }

  /** Whether the next write should run inline. */
  inline(): boolean {
    return this.budgetMs > 0 && this.now() >= this.pooledUntil;
  }

  /**
   * Reports how long an inline write blocked. Returns the change of mode when this write moved writes to
   * the thread pool (the caller logs it), else null.
   */
  record(tookMs: number): InlineWriteChange | null {
    const over = tookMs > this.budgetMs;
    this.recent.push(over);
    if (this.recent.length > WINDOW) this.recent.shift();
    if (!over) return null;
    this.overruns++;
    const overrunsInWindow = this.recent.filter(Boolean).length;
    if (overrunsInWindow < OVERRUNS_IN_WINDOW && tookMs <= STALL_FACTOR * this.budgetMs) return null;
    this.pooledUntil = this.now() + this.backoffMs;
    this.recent = [];
    return { inline: false, tookMs, overrunsInWindow };
  }
}
