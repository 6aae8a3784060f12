/** Polling waits for tests: real processes and brokers take their own time, so tests wait for a condition, not a fixed sleep. */

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Resolves with the first truthy value of `probe`, polled every 20 ms; throws naming `what` after `timeoutMs`. */
export async function until<T>(what: string, probe: () => T | undefined | null | false, timeoutMs = 8000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

export interface NotifiedWaitOptions {
  /** Named in the timeout message. */
  what: string;
  timeoutMs: number;
  /** Appended to the timeout message: what had been seen by then. */
  context?: () => string;
  /** A reason to stop waiting before the timeout (the process exited), as the rejection's message; else null. */
  gaveUp?: () => string | null;
}

/**
 * Resolves with the first truthy value of `probe`, checked at once and whenever the source calls the listeners
 * in `listeners` (a message, a log line arrived); rejects when `probe` throws, when `gaveUp` gives a reason, or
 * after `timeoutMs`. Event-driven rather than polled, for sources that say when something changed.
 */
export function untilNotified<T>(listeners: Set<() => void>, probe: () => T | undefined | null | false, o: NotifiedWaitOptions): Promise<T> {
  return new Promise((resolve, reject) => {
    const finish = (settle: () => void) => {
      clearTimeout(timer);
      listeners.delete(check);
      settle();
    };
    const check = () => {
      let value: T | undefined | null | false;
      try {
        value = probe();
      } catch (e) {
        finish(() => reject(e as Error));
        return;
      }
      if (value) {
        const found = value;
        finish(() => resolve(found));
        return;
      }
      const reason = o.gaveUp?.();
      if (reason) finish(() => reject(new Error(reason)));
    };
    const timer = setTimeout(() => finish(() => reject(new Error(`timed out after ${o.timeoutMs} ms waiting for ${o.what}${o.context?.() ?? ''}`))), o.timeoutMs);
    listeners.add(check);
    check();
  });
}
