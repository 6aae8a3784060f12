/**
 * The agent's Prometheus metrics, on a registry of its own (not prom-client's global one, so tests can
 * run several agents in one process). Names follow Prometheus conventions: `_total` counters, seconds.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

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

  setModel(id: string, version: string, provider: string): void {
    this.modelInfo.reset();
    this.modelInfo.set({ id, version, provider }, 1);
  }
}
