/**
 * Every payload the agent puts on (or accepts from) MQTT, as zod schemas: the single truth for what SCADA,
 * the PLC gateway and operators' tools read; docs/ gets their JSON Schema. All JSON payloads are flat UTF-8
 * JSON objects; the one binary payload is the heat-map PNG (its metadata travels beside it, see below).
 *
 * Topics, all under `<prefix>/<station>/` (see src/publish/topics.ts):
 *   status               retained, QoS 1   StatusPayload (online on connect; offline = last will or shutdown)
 *   result               QoS 1, never retained   ResultPayload, one per inspected part
 *   reject               QoS 1, MQTT 5 message expiry = time left to the deadline   RejectPayload
 *   reject/missed        QoS 1   RejectMissedPayload: a reject that could not be delivered before its deadline
 *   heatmap              QoS 0   binary PNG (MQTT 5: content type image/png + user properties = HeatmapMeta)
 *   heatmap/meta         QoS 0   HeatmapMetaPayload (for MQTT 3.1.1 subscribers, which get no properties)
 *   metrics              QoS 0   MetricsPayload, periodic
 *   cmd/<name>           request (JSON object: the command's arguments plus optional `transaction`)
 *   cmd/<name>/response  CommandResponse
 */
import { z } from 'zod';
import { BundleChunkSchema } from './bundle-chunk-schema.js';
import { InspectionRecordSchema, VerdictSchema } from './result-schema.js';

const ModelRefSchema = z.strictObject({ id: z.string(), version: z.string() });

// ---------------------------------------------------------------------------------------------- status

export const StatusOnlineSchema = z.strictObject({
  state: z.literal('online'),
  station: z.string(),
  since: z.iso.datetime().describe('When this broker connection came up (ISO 8601, UTC).'),
  agent: z.strictObject({ name: z.literal('ast-edge'), version: z.string() }),
  model: ModelRefSchema.nullable().describe('The model inspecting now; null while none is loaded.'),
  provider: z.string().nullable().describe('ONNX Runtime execution provider running the model (tensorrt, cuda, cpu); null while none is loaded.'),
  protocolVersion: z.union([z.literal(4), z.literal(5)]).describe('MQTT protocol level of this connection: 5, or 4 (3.1.1) when the broker refused MQTT 5.'),
});

export const StatusOfflineSchema = z.strictObject({
  state: z.literal('offline'),
  station: z.string(),
  reason: z.enum(['connection-lost', 'shutdown']).describe('`connection-lost`: the broker published the agent\'s last will; `shutdown`: the agent stopped cleanly.'),
  at: z.iso.datetime().optional().describe('When the agent stopped (shutdown only: a last will is written before it is needed, so it carries no time).'),
});

/** Retained availability, zigbee2mqtt style: subscribers read `state` and need nothing else. */
export const StatusPayloadSchema = z
  .discriminatedUnion('state', [StatusOnlineSchema, StatusOfflineSchema])
  .describe('Retained availability at QoS 1: `online` on every connect, `offline` as the last will or on a clean shutdown.');
export type StatusPayload = z.infer<typeof StatusPayloadSchema>;
export type StatusOnline = z.infer<typeof StatusOnlineSchema>;
export type StatusOffline = z.infer<typeof StatusOfflineSchema>;

// ---------------------------------------------------------------------------------------------- result

/**
 * The inspection record, flat, plus two delivery fields. Extended rather than wrapped so that a subscriber
 * reads `score`, `verdict`... at the top level whether or not it knows about delivery.
 */
export const ResultPayloadSchema = InspectionRecordSchema.extend({
  publishedAt: z.iso.datetime().describe('When this message was handed to the broker (ISO 8601, UTC).'),
  historical: z
    .boolean()
    .describe(
      'true: a replay from the outbox: the record was journaled before the current broker connection came up (an outage, or a previous run of the agent). Delivery is at least once: deduplicate on `seq`.',
    ),
}).describe('One inspected part: the inspection record plus its delivery fields. QoS 1, never retained.');
export type ResultPayload = z.infer<typeof ResultPayloadSchema>;

// ---------------------------------------------------------------------------------------------- reject

/** What the PLC gateway acts on: kick part `partId` out before `deadline`. */
export const RejectSchema = InspectionRecordSchema.pick({ seq: true, station: true, partId: true }).extend({
  verdict: z.enum(['reject', 'error']).describe('`reject`: the model found an anomaly; `error`: no verdict in time or a failure (fail-safe reject).'),
  reason: z.string(),
  capturedAt: InspectionRecordSchema.shape.capturedAt,
  deadline: z.iso.datetime().describe('capturedAt + the inspection deadline: a reject acted on after this may hit another part.'),
});
export type Reject = z.infer<typeof RejectSchema>;

export const RejectPayloadSchema = RejectSchema.extend({ publishedAt: z.iso.datetime() }).describe(
  'A live reject, QoS 1, sent only before its deadline; MQTT 5 message expiry = the seconds left (rounded up, at least 1). On MQTT 3.1.1 there is no expiry: check `deadline`.',
);
export type RejectPayload = z.infer<typeof RejectPayloadSchema>;

/**
 * A reject that reached the broker only after its deadline (outage, restart): never sent on `reject`,
 * because acting on it would kick a different part. An alarm for SCADA: this part may have passed.
 */
export const RejectMissedPayloadSchema = RejectSchema.extend({
  publishedAt: z.iso.datetime(),
  missedByMs: z.number().min(0).describe('How late the reject is, publishedAt − deadline, ms.'),
}).describe('Alarm: a reject that could not be delivered before its deadline and was therefore not sent as a live reject; the part may have passed.');
export type RejectMissedPayload = z.infer<typeof RejectMissedPayloadSchema>;

// --------------------------------------------------------------------------------------------- heatmap

/**
 * The anomaly map over the frame as PNG bytes on `heatmap` (raw binary, so image tools and dashboards
 * use it as is and it is a third smaller than base64). The same fields as MQTT 5 user properties (as
 * strings) and, for MQTT 3.1.1 subscribers, as JSON on `heatmap/meta` published just before it.
 */
export const HeatmapMetaPayloadSchema = InspectionRecordSchema.pick({
  seq: true,
  station: true,
  partId: true,
  capturedAt: true,
  verdict: true,
  score: true,
  normalizedScore: true,
  threshold: true,
}).extend({
  contentType: z.literal('image/png'),
  width: z.int().positive(),
  height: z.int().positive(),
  scaleMax: z.number().positive().describe('Colour scale: black-blue at 0, the threshold at mid-scale (yellow), red at twice the threshold or above.'),
  bytes: z.int().positive(),
}).describe('Describes the PNG published on `heatmap` (QoS 0, rate-limited); MQTT 5 subscribers get the same fields as user properties.');
export type HeatmapMetaPayload = z.infer<typeof HeatmapMetaPayloadSchema>;

// --------------------------------------------------------------------------------------------- metrics

export const PublisherStatsSchema = z.strictObject({
  published: z
    .strictObject({
      result: z.int().min(0),
      reject: z.int().min(0),
      rejectMissed: z.int().min(0),
      heatmap: z.int().min(0),
      metrics: z.int().min(0),
    })
    .describe('Messages the broker acknowledged (QoS 1) or that were written (QoS 0), by kind.'),
  failures: z.int().min(0).describe('Publishes refused or cut off (they stay queued and are retried; QoS 0 ones are dropped).'),
  journalFailures: z.int().min(0).describe('Outbox appends that failed (the message was still published from memory).'),
  pending: z.int().min(0).describe('Messages waiting for the broker (queued + in flight).'),
  heatmapsSkipped: z.int().min(0).describe('Heat maps not sent because of the rate limit, no connection or an encoder failure.'),
  invalidEntries: z.int().min(0).describe('Outbox entries that were not a message of this agent (logged and acknowledged).'),
});
export type PublisherStats = z.infer<typeof PublisherStatsSchema>;

export const MetricsPayloadSchema = z.strictObject({
  station: z.string(),
  at: z.iso.datetime(),
  values: z.record(z.string(), z.number().nullable()).describe('The agent\'s snapshot (inspections, latency, frames dropped...); names are the caller\'s.'),
  publisher: PublisherStatsSchema,
}).describe('Periodic figures, QoS 0, not retained.');
export type MetricsPayload = z.infer<typeof MetricsPayloadSchema>;

// -------------------------------------------------------------------------------------------- commands

/** Echoed in the response so a requester can match it; numbers and strings as zigbee2mqtt allows. */
export const TransactionSchema = z.union([z.string().max(256), z.number()]);

/**
 * A request is a JSON object: the command's arguments plus an optional `transaction`. The envelope only
 * checks `transaction`; each command validates the rest with its own schema (unknown keys are refused).
 */
export const CommandRequestEnvelopeSchema = z.looseObject({ transaction: TransactionSchema.optional() });

export const CommandSuccessSchema = z.looseObject({
  ok: z.literal(true),
  transaction: TransactionSchema.optional(),
});
export const CommandFailureSchema = z.strictObject({
  ok: z.literal(false),
  transaction: TransactionSchema.optional(),
  error: z.string().describe('Why nothing was done: malformed JSON, unknown command, the offending field, a handler failure.'),
});
/** `{ok: true, transaction?, ...command's result}` or `{ok: false, transaction?, error}`. */
export const CommandResponseSchema = z
  .discriminatedUnion('ok', [CommandSuccessSchema, CommandFailureSchema])
  .describe('On cmd/<name>/response (or the MQTT 5 response topic): the request\'s transaction echoed, and the command\'s result or the reason nothing was done.');
export type CommandResponse = z.infer<typeof CommandResponseSchema>;

/** `cmd/status`: no arguments; answers with the online status and the publisher's figures. */
export const StatusRequestSchema = z.strictObject({});

/**
 * `cmd/set-threshold`: exactly one of a normalised threshold (0.5 = the calibrated one; survives model
 * updates) or a raw score threshold (belongs to the model inspecting now).
 */
export const SetThresholdRequestSchema = z
  .strictObject({
    normalized: z.number().gt(0).lt(1).optional().describe('Normalised threshold in (0, 1); 0.5 is the calibrated one. Survives model updates.'),
    raw: z.number().nonnegative().optional().describe('Raw image-score threshold; belongs to the model inspecting now.'),
  })
  .refine((v) => (v.normalized === undefined) !== (v.raw === undefined), {
    message: 'give exactly one of normalized or raw',
    path: ['normalized'],
  });
export type SetThresholdRequest = z.infer<typeof SetThresholdRequestSchema>;

/** `cmd/reload`: no arguments. */
export const ReloadRequestSchema = z.strictObject({});

/**
 * `cmd/capture`: save the next `count` inspected frames as PNG good samples in
 * `<stateDir>/captures/<folder>/`, for fine-tuning (`ast-agent train --from … --data <that folder>`).
 */
export const CaptureRequestSchema = z.strictObject({
  count: z.int().min(1).max(10_000).describe('How many of the next inspected frames to save.'),
  label: z
    .string()
    .regex(/^[A-Za-z0-9_.-]{1,64}$/, 'must be 1–64 letters, digits, ".", "_" or "-"')
    .optional()
    .describe('Folder name under captures/ (default: a UTC timestamp).'),
  onlyPass: z.boolean().default(true).describe('Save only frames judged pass (good samples); false: every inspected frame.'),
});

/** `cmd/model-update`: download a signed bundle .tar from a URL and install it. */
export const ModelUpdateRequestSchema = z.strictObject({
  url: z.url({ protocol: /^https?$/ }).describe('http:// or https:// address of the bundle .tar.'),
  sha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex digits').optional().describe('Expected sha256 of the .tar (checked before staging).'),
});

/** `cmd/model-rollback`: back to the previous model version. */
export const ModelRollbackRequestSchema = z.strictObject({});

/**
 * Progress of an install, on `cmd/model-update/response` (`final: false`) before the final answer; for a
 * chunked transfer the `transaction` is the transferId.
 */
export const ModelUpdateProgressSchema = z.strictObject({
  ok: z.literal(true),
  transaction: TransactionSchema.optional(),
  final: z.literal(false),
  step: z.enum(['receiving', 'staging', 'checking', 'loading', 'self-test', 'activating', 'probation', 'done', 'rolled-back', 'failed']),
  detail: z.string().optional(),
  model: z.strictObject({ id: z.string(), version: z.string() }).optional(),
});

/** `<prefix>/<station>/trigger` (external trigger mode): a part is in front of the camera now. */
export const TriggerPayloadSchema = z.strictObject({
  partId: z.string().min(1).max(128).describe('The part\'s id from the PLC or MES; echoed in its result and reject.'),
});

/** A command request as a requester writes it: the command's arguments plus the optional `transaction`. */
export function withTransaction<S extends z.ZodObject>(schema: S) {
  return schema.extend({ transaction: TransactionSchema.optional() });
}

export interface MqttPayloadSchemaEntry {
  /** File name stem: docs/mqtt/<name>.schema.json */
  name: string;
  title: string;
  schema: z.ZodType;
  /** `output`: what the agent publishes; `input`: what it accepts (command requests). */
  io: 'input' | 'output';
}

/** Every MQTT payload with a JSON Schema in docs/mqtt/ (src/config/json-schemas.ts lists them). */
export const MQTT_PAYLOAD_SCHEMAS: MqttPayloadSchemaEntry[] = [
  { name: 'status', title: 'ast-edge MQTT status (retained availability, last will)', schema: StatusPayloadSchema, io: 'output' },
  { name: 'result', title: 'ast-edge inspection result', schema: ResultPayloadSchema, io: 'output' },
  { name: 'reject', title: 'ast-edge reject signal', schema: RejectPayloadSchema, io: 'output' },
  { name: 'reject-missed', title: 'ast-edge reject that missed its deadline (alarm)', schema: RejectMissedPayloadSchema, io: 'output' },
  { name: 'heatmap-meta', title: 'ast-edge heat-map metadata', schema: HeatmapMetaPayloadSchema, io: 'output' },
  { name: 'metrics', title: 'ast-edge periodic metrics', schema: MetricsPayloadSchema, io: 'output' },
  { name: 'command-response', title: 'ast-edge command response', schema: CommandResponseSchema, io: 'output' },
  { name: 'command-status', title: 'ast-edge command request: status', schema: withTransaction(StatusRequestSchema), io: 'input' },
  { name: 'command-set-threshold', title: 'ast-edge command request: set-threshold', schema: withTransaction(SetThresholdRequestSchema), io: 'input' },
  { name: 'command-reload', title: 'ast-edge command request: reload', schema: withTransaction(ReloadRequestSchema), io: 'input' },
  { name: 'command-capture', title: 'ast-edge command request: capture', schema: withTransaction(CaptureRequestSchema), io: 'input' },
  { name: 'command-model-update', title: 'ast-edge command request: model-update', schema: withTransaction(ModelUpdateRequestSchema), io: 'input' },
  { name: 'command-model-chunk', title: 'ast-edge command request: model-chunk (one chunk of a bundle .tar)', schema: withTransaction(BundleChunkSchema), io: 'input' },
  { name: 'command-model-rollback', title: 'ast-edge command request: model-rollback', schema: withTransaction(ModelRollbackRequestSchema), io: 'input' },
  { name: 'model-update-progress', title: 'ast-edge model update progress', schema: ModelUpdateProgressSchema, io: 'output' },
  { name: 'trigger', title: 'ast-edge part-present trigger (external trigger mode)', schema: TriggerPayloadSchema, io: 'input' },
];
