/**
 * One inspection's outcome: what result sinks (log, MQTT, Sparkplug, outbox) receive and what SCADA
 * subscribers read as the `result` payload. The zod schema is the single truth; docs/ gets its JSON Schema.
 */
import { z } from 'zod';

export const VerdictSchema = z.enum(['pass', 'reject', 'error']);
export type InspectionVerdict = z.infer<typeof VerdictSchema>;

export const InspectionRecordSchema = z.strictObject({
  /** Monotonic over the agent's whole life (survives restarts), so subscribers can spot gaps and order replays. */
  seq: z.int().min(0),
  station: z.string(),
  /** From the external trigger (PLC); null in continuous mode. */
  partId: z.string().nullable(),
  /** Wall-clock time the frame was captured (ISO 8601, UTC). */
  capturedAt: z.iso.datetime(),
  /** Raw image score (max of the anomaly map); null when no score was computed (verdict `error`). */
  score: z.number().nullable(),
  /** sigmoid((score − calibrated threshold) / good std): 0.5 is the decision boundary. */
  normalizedScore: z.number().nullable(),
  /** Raw threshold in force for this part (calibrated, or overridden at run time). */
  threshold: z.number().nullable(),
  verdict: VerdictSchema,
  /** Why the verdict is `error` (deadline missed, model failure, camera lost...). */
  reason: z.string().optional(),
  /** Capture to verdict, ms. */
  latencyMs: z.number().min(0),
  model: z.strictObject({ id: z.string(), version: z.string() }),
});
export type InspectionRecord = z.infer<typeof InspectionRecordSchema>;
