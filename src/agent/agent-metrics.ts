/**
 * The agent's Prometheus metrics, on a registry of its own (not prom-client's global one, so tests can
 * run several agents in one process). Names follow Prometheus conventions: `_total` counters, seconds.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { OutboxStats } from '../publish/outbox.js';
import type { SparkplugStoreStats } from '../publish/sparkplug/sparkplug-node.js';

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5];

export class AgentMetrics {
  readonly registry = new Registry();
  readonly frames: Counter<'stream'>;
  readonly framesDropped: Counter<'reason'>;
  readonly inspections: Counter<'verdict'>;
  readonly lateResults: Counter;
  readonly latency: Histogram;
  readonly detectorSeconds: Histogram;
  readonly batchSize: Histogram;
  readonly queueDepth: Gauge;
  readonly sourceUp: Gauge<'stream'>;
  readonly sourceRestarts: Counter<'stream'>;
  readonly modelInfo: Gauge<'id' | 'version' | 'provider'>;
  readonly publishFailures: Counter<'sink'>;

  constructor(station: string, withProcessMetrics = true) {
    const r = this.registry;
    r.setDefaultLabels({ station });
    if (withProcessMetrics) collectDefaultMetrics({ register: r, prefix: 'ast_' });
    this.frames = new Counter({ name: 'ast_frames_total', help: 'Frames received from the camera', labelNames: ['stream'], registers: [r] });
    this.framesDropped = new Counter({
      name: 'ast_frames_dropped_total',
      help: 'Frames not inspected: overload (detector behind), unpaired (RGB-D), skipped (every n-th)',
      labelNames: ['reason'],
      registers: [r],
    });
    this.inspections = new Counter({ name: 'ast_inspections_total', help: 'Inspections by verdict', labelNames: ['verdict'], registers: [r] });
    this.lateResults = new Counter({ name: 'ast_late_results_total', help: 'Scores that arrived after their part was already failed for its deadline', registers: [r] });
    this.latency = new Histogram({ name: 'ast_inspection_latency_seconds', help: 'Capture (or trigger) to verdict', buckets: LATENCY_BUCKETS, registers: [r] });
    this.detectorSeconds = new Histogram({ name: 'ast_detector_seconds', help: 'One detector run (a batch)', buckets: LATENCY_BUCKETS, registers: [r] });
    this.batchSize = new Histogram({ name: 'ast_batch_size', help: 'Frames per detector run', buckets: [1, 2, 4, 8, 16, 32, 64], registers: [r] });
    this.queueDepth = new Gauge({ name: 'ast_queue_depth', help: 'Frames waiting for the detector', registers: [r] });
    this.sourceUp = new Gauge({ name: 'ast_source_up', help: '1 while the stream delivers frames', labelNames: ['stream'], registers: [r] });
    this.sourceRestarts = new Counter({ name: 'ast_source_restarts_total', help: 'Camera pipeline restarts after a failure or stall', labelNames: ['stream'], registers: [r] });
    this.modelInfo = new Gauge({ name: 'ast_model_info', help: 'The model inspecting now (value 1)', labelNames: ['id', 'version', 'provider'], registers: [r] });
    this.publishFailures = new Counter({ name: 'ast_publish_failures_total', help: 'Results a sink could not hand on', labelNames: ['sink'], registers: [r] });
  }

  /** The same counts as plain numbers, readable synchronously (MQTT metrics, Sparkplug, status). */
  readonly tally = { frames: 0, inspected: 0, pass: 0, reject: 0, error: 0, dropped: 0, unpaired: 0 };

  countFrame(stream: 'colour' | 'inspected'): void {
    this.frames.inc({ stream });
    if (stream === 'colour') this.tally.frames++;
    else this.tally.inspected++;
  }

  countDrop(reason: string): void {
    this.framesDropped.inc({ reason });
    if (reason.startsWith('unpaired')) this.tally.unpaired++;
    else if (reason !== 'skipped') this.tally.dropped++;
  }

  countVerdict(verdict: 'pass' | 'reject' | 'error'): void {
    this.inspections.inc({ verdict });
    this.tally[verdict]++;
  }

  /**
   * The MQTT outbox's figures, read at each scrape from `stats` (null while the outbox is not open): what
   * waits for the broker, how old it is, what the bounds made it drop, and where its writes run.
   */
  observeOutbox(stats: () => OutboxStats | null): void {
    const r = this.registry;
    const read = (f: (s: OutboxStats) => number) => () => {
      const s = stats();
      return s ? f(s) : null;
    };
    mirroredGauge(r, 'ast_outbox_pending', 'Results and rejects journaled, not yet acknowledged by the broker', read((s) => s.pending));
    mirroredGauge(r, 'ast_outbox_bytes', 'Size of the journal files', read((s) => s.bytes));
    mirroredGauge(r, 'ast_outbox_oldest_age_seconds', 'Age of the oldest message waiting for the broker (0 when none)', read((s) => (s.oldestAgeMs ?? 0) / 1000));
    mirroredGauge(r, 'ast_outbox_inline_writes', '1 while journal writes run on the event loop, 0 while on the I/O thread pool (after slow writes)', read((s) => (s.inlineWrites ? 1 : 0)));
    mirroredCounter(r, 'ast_outbox_dropped_total', 'Messages the journal dropped: size or age bound, or a failed write', () => {
      const s = stats();
      return s && { size: s.droppedForSize, age: s.droppedForAge, 'write-failed': s.droppedOnError };
    }, 'reason');
    mirroredCounter(r, 'ast_outbox_slow_writes_total', 'Journal writes that blocked the event loop longer than mqtt.outbox.inlineWriteBudgetMs', () => {
      const s = stats();
      return s && { '': s.inlineWriteOverruns };
    });
  }

  /** Sparkplug store and forward, read at each scrape: results held while the session is down, forwarded, dropped. */
  observeSparkplug(stats: () => SparkplugStoreStats): void {
    const r = this.registry;
    mirroredGauge(r, 'ast_sparkplug_held', 'Results held while the Sparkplug session is down, to be sent as historical data after the next birth', () => stats().held);
    mirroredCounter(r, 'ast_sparkplug_forwarded_total', 'Results sent as Sparkplug historical data after a session came back', () => ({ '': stats().forwarded }));
    mirroredCounter(r, 'ast_sparkplug_dropped_total', 'Results dropped while the Sparkplug session was down (more than mqtt.sparkplug.storeWhileOffline)', () => ({ '': stats().dropped }));
  }

  setModel(id: string, version: string, provider: string): void {
    this.modelInfo.reset();
    this.modelInfo.set({ id, version, provider }, 1);
  }
}

/** A gauge set at each scrape from `read` (null: left as it was). */
function mirroredGauge(registry: Registry, name: string, help: string, read: () => number | null): Gauge {
  return new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      const v = read();
      if (v !== null) this.set(v);
    },
  });
}

/**
 * A counter mirroring totals kept elsewhere (by `label` value; '' when unlabelled): each scrape adds what grew
 * since the last one, so Prometheus sees a counter that only goes up.
 */
function mirroredCounter(registry: Registry, name: string, help: string, read: () => Record<string, number> | null, label?: string): Counter<string> {
  const seen = new Map<string, number>();
  return new Counter({
    name,
    help,
    registers: [registry],
    ...(label ? { labelNames: [label] } : {}),
    collect() {
      for (const [key, total] of Object.entries(read() ?? {})) {
        const before = seen.get(key) ?? 0;
        if (total > before) {
          if (label) this.inc({ [label]: key }, total - before);
          else this.inc(total - before);
        }
        seen.set(key, Math.max(before, total));
      }
    },
  });
}
