/**
 * The one narrow interface between the inspection loop and everything that carries results away (log,
 * MQTT, Sparkplug B, outbox, metrics). A sink never throws into the loop and never blocks it: `publish`
 * returns at once, and a sink that needs durability (the outbox) does its own queuing.
 */
import type { InspectionRecord } from '../config/result-schema.js';

export interface AnomalyMap {
  /** Row-major [height, width], at feature resolution. */
  data: Float32Array;
  width: number;
  height: number;
}

export interface InspectionOutcome {
  record: InspectionRecord;
  /** Present when the detector produced one (not for verdict `error`). */
  map?: AnomalyMap;
  /** The inspected RGB frame (uint8, HWC) at model input size, for heat-map overlays. */
  frame?: { data: Uint8Array; width: number; height: number };
}

export interface ResultSink {
  readonly name: string;
  /**
   * Carries the reject signal to the line: handed each result before the other sinks (logging, frame
   * capture), so their work is not on the reject's path.
   */
  readonly carriesRejects?: boolean;
  start(): Promise<void>;
  /** Must not throw and must not wait on the network. */
  publish(outcome: InspectionOutcome): void;
  /** Flushes what can be flushed within the agent's shutdown bound. */
  stop(): Promise<void>;
}
