/**
 * The agent's configuration file (`ast-agent run --config FILE`), validated once at start: unknown keys
 * and bad values are refused with their path, so nothing starts half-configured. The keys below are a
 * contract with users and tests; add, never rename.
 */
import { z } from 'zod';
import { ProviderSchema } from './runtime-schema.js';

/** Station ids become MQTT topic levels and Sparkplug device ids: no wildcards, separators or spaces. */
const TOPIC_LEVEL = /^[A-Za-z0-9_.-]+$/;

const ReconnectSchema = z.strictObject({
  /** First wait after a camera stops or fails, doubled on every failure up to `maxMs`. */
  initialMs: z.int().min(10).default(500),
  maxMs: z.int().min(10).default(30_000),
});

/**
 * Where frames come from. Presets build the source part of a GStreamer launch string; `pipeline` takes
 * any launch string. The agent appends conversion and scaling to the model's input size and an appsink.
 */
const TestSourceSchema = z.strictObject({
  kind: z.literal('test'),
  /** videotestsrc pattern, e.g. smpte, ball, snow. */
  pattern: z.string().regex(/^[a-z0-9-]+$/).default('smpte'),
  fps: z.number().positive().default(10),
  /** Stop after this many frames (a camera that goes away: exercises reconnect). */
  numBuffers: z.int().positive().optional(),
});
const FileSourceSchema = z.strictObject({
  kind: z.literal('file'),
  /** A folder of images, or a printf pattern such as /data/part-%05d.png. */
  path: z.string().min(1),
  loop: z.boolean().default(true),
  /** Frames per second fed to the agent (a file source has no camera clock). */
  fps: z.number().positive().default(10),
});
const V4l2SourceSchema = z.strictObject({
  kind: z.literal('v4l2'),
  device: z.string().min(1).default('/dev/video0'),
});
const RtspSourceSchema = z.strictObject({
  kind: z.literal('rtsp'),
  url: z.string().regex(/^rtsps?:\/\//, 'must start with rtsp:// or rtsps://'),
  /** Jitter buffer in ms; lower is fresher, higher survives a lossy network. */
  latencyMs: z.int().min(0).default(200),
});
const AravisSourceSchema = z.strictObject({
  kind: z.literal('aravis'),
  /** GigE Vision camera name as aravis lists it; absent: the first camera found. */
  camera: z.string().optional(),
});
const PipelineSourceSchema = z.strictObject({
  kind: z.literal('pipeline'),
  /** A GStreamer launch string for the stream; must not contain its own appsink. */
  pipeline: z.string().min(1),
});

/** The same source kinds, each with extra fields (a depth stream's pairing, the colour stream's reconnect). */
function sourceUnion<E extends z.core.$ZodLooseShape>(extra: E) {
  return z.preprocess(
    // `{pipeline: "..."}` without a kind is the custom-pipeline source.
    (v) => (v && typeof v === 'object' && !('kind' in v) && 'pipeline' in v ? { kind: 'pipeline', ...v } : v),
    z.discriminatedUnion('kind', [
      TestSourceSchema.extend(extra),
      FileSourceSchema.extend(extra),
      V4l2SourceSchema.extend(extra),
      RtspSourceSchema.extend(extra),
      AravisSourceSchema.extend(extra),
      PipelineSourceSchema.extend(extra),
    ]),
  );
}

export const DepthSourceSchema = sourceUnion({
  /** Colour and depth frames further apart than this are not a pair; both are counted and dropped. */
  toleranceMs: z.number().positive().default(20),
  /** `order`: pair by frame index (file sources, where arrival times say nothing); `time`: by arrival. */
  pairBy: z.enum(['time', 'order']).default('time'),
});
export type DepthSource = z.infer<typeof DepthSourceSchema>;

export const SourceSchema = sourceUnion({
  reconnect: ReconnectSchema.prefault({}),
  /** RGB-D: a second pipeline delivering 16-bit depth (GRAY16_LE), paired with colour frames. */
  depth: DepthSourceSchema.optional(),
});
export type Source = z.infer<typeof SourceSchema>;
/** The stream part of a source (what a launch string is built from). */
export type StreamSource = z.infer<typeof TestSourceSchema> | z.infer<typeof FileSourceSchema> | z.infer<typeof V4l2SourceSchema>
  | z.infer<typeof RtspSourceSchema> | z.infer<typeof AravisSourceSchema> | z.infer<typeof PipelineSourceSchema>;

const ModelSchema = z.strictObject({
  /** A bundle folder or .tar (a model store path once updates exist). */
  bundle: z.string().min(1),
  providers: z.array(ProviderSchema).min(1).default([{ name: 'cpu', arena: true }]),
  intraOpThreads: z.int().min(0).default(0),
  interOpThreads: z.int().min(0).default(0),
  spinWait: z.boolean().default(false),
  warmupRuns: z.int().min(0).default(1),
  /** Overrides the bundle's calibrated threshold, as a normalised score in (0, 1); 0.5 is the calibrated one. */
  threshold: z.number().gt(0).lt(1).optional(),
});

const TlsSchema = z.strictObject({
  ca: z.string().optional(),
  cert: z.string().optional(),
  key: z.string().optional(),
  /** Only for test rigs with self-signed brokers. */
  rejectUnauthorized: z.boolean().default(true),
});

const MqttSchema = z.strictObject({
  /** mqtt://, mqtts://, ws:// or wss://. Absent: an in-process broker on `embeddedPort` (demo, bench). */
  url: z.string().regex(/^(mqtts?|wss?):\/\//, 'must start with mqtt://, mqtts://, ws:// or wss://').optional(),
  embeddedPort: z.int().min(0).max(65535).default(1883),
  topicPrefix: z.string().regex(/^[A-Za-z0-9_./-]+$/, 'must be topic levels without wildcards').default('ast'),
  username: z.string().optional(),
  /** Prefer the environment variable AST_EDGE_MQTT_PASSWORD over writing it here. */
  password: z.string().optional(),
  clientId: z.string().optional(),
  tls: TlsSchema.optional(),
  protocolVersion: z.union([z.literal(5), z.literal(4)]).default(5),
  keepaliveS: z.int().min(0).default(30),
});

const TriggerSchema = z.discriminatedUnion('mode', [
  z.strictObject({
    mode: z.literal('continuous'),
    /** Inspect every n-th frame. */
    every: z.int().min(1).default(1),
  }),
  z.strictObject({
    mode: z.literal('external'),
    /** A part-present message (MQTT `<prefix>/<station>/trigger`) selects the next frame captured after it. */
    maxWaitMs: z.int().min(1).default(1000),
  }),
]);

const InspectionSchema = z.strictObject({
  trigger: TriggerSchema.prefault({ mode: 'continuous' }),
  /** A part without a verdict this long after capture gets verdict `error` and a reject. */
  deadlineMs: z.int().min(1).default(2000),
  /** Frames scored in one run when several are waiting (batching pays on GPUs). */
  maxBatch: z.int().min(1).max(64).default(1),
  /** Frames waiting for the detector; beyond this the oldest are dropped at the source and counted. */
  queueLength: z.int().min(1).max(256).default(2),
});

const HttpSchema = z.strictObject({
  /** `GET /healthz` and Prometheus `GET /metrics`; 0 picks a free port (tests). */
  port: z.int().min(0).max(65535).default(9108),
  host: z.string().default('0.0.0.0'),
});

export const AgentConfigSchema = z.strictObject({
  station: z.string().regex(TOPIC_LEVEL, 'must be letters, digits, ".", "_" or "-" (it is an MQTT topic level)'),
  source: SourceSchema,
  model: ModelSchema,
  mqtt: MqttSchema.prefault({}),
  inspection: InspectionSchema.prefault({}),
  http: HttpSchema.prefault({}),
  /** Durable state: outbox, run-time settings, model store. Must be writable (systemd ReadWritePaths). */
  stateDir: z.string().default('/var/lib/ast-edge'),
  log: z.strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info') }).prefault({}),
});
export type AgentConfig = z.infer<typeof AgentConfigSchema>;
