/**
 * The agent's configuration file (`ast-agent run --config FILE`), validated once at start: unknown keys
 * and bad values are refused with their path, so nothing starts half-configured. The keys below are a
 * contract with users and tests; add, never rename.
 */
import { z } from 'zod';
import { ProviderSchema, type RuntimeOptions } from './runtime-schema.js';

/** Station ids become MQTT topic levels and Sparkplug device ids: no wildcards, separators or spaces. */
const TOPIC_LEVEL = /^[A-Za-z0-9_.-]+$/;

const ReconnectSchema = z.strictObject({
  initialMs: z.int().min(10).default(500).describe('First wait (ms) after a camera stops or fails, doubled on every failure up to maxMs.'),
  maxMs: z.int().min(10).default(30_000).describe('Longest wait (ms) between two attempts.'),
});

/**
 * Where frames come from. Presets build the source part of a GStreamer launch string; `pipeline` takes
 * any launch string. The agent appends conversion and scaling to the model's input size and an appsink.
 */
const TestSourceSchema = z.strictObject({
  kind: z.literal('test').describe('GStreamer test pattern (videotestsrc): no camera needed.'),
  pattern: z
    .string()
    .regex(/^[a-z0-9-]+$/, 'must be a videotestsrc pattern name such as smpte, ball or snow')
    .default('smpte')
    .describe('videotestsrc pattern, e.g. smpte, ball, snow.'),
  fps: z.number().positive().default(10).describe('Frames per second.'),
  numBuffers: z.int().positive().optional().describe('Stop after this many frames (a camera that goes away: exercises reconnect).'),
});
const FileSourceSchema = z.strictObject({
  kind: z.literal('file').describe('Image files replayed as a camera (recorded parts, line simulation).'),
  path: z
    .string()
    .min(1)
    .describe("A folder of images, or a printf pattern such as /data/part-%05d.png; relative to the config file's folder."),
  loop: z.boolean().default(true).describe('Start again at the first image after the last one.'),
  fps: z.number().positive().default(10).describe('Frames per second fed to the agent (a file source has no camera clock).'),
});
const V4l2SourceSchema = z.strictObject({
  kind: z.literal('v4l2').describe('V4L2 camera: USB/UVC and other /dev/video* devices.'),
  device: z.string().min(1).default('/dev/video0').describe('Device node; names under /dev/v4l/by-id/ survive reboots and replugging.'),
});
const RtspSourceSchema = z.strictObject({
  kind: z.literal('rtsp').describe('IP camera over RTSP.'),
  url: z
    .string()
    .regex(/^rtsps?:\/\//, 'must start with rtsp:// or rtsps://')
    .describe('Stream URL; credentials in it are secrets, so keep the file readable by root and the agent only.'),
  latencyMs: z.int().min(0).default(200).describe('Jitter buffer in ms; lower is fresher, higher survives a lossy network.'),
});
const AravisSourceSchema = z.strictObject({
  kind: z.literal('aravis').describe('GigE Vision or USB3 Vision camera through aravis (aravissrc).'),
  camera: z.string().optional().describe('Camera name as aravis lists it (arv-tool-0.8); absent: the first camera found.'),
});
const PipelineSourceSchema = z.strictObject({
  kind: z.literal('pipeline').describe('Any GStreamer launch string (e.g. nvarguscamerasrc for Jetson CSI cameras); kind may be omitted.'),
  pipeline: z
    .string()
    .min(1)
    .describe('A GStreamer launch string for the stream, without an appsink: the agent appends conversion, scaling and its own.'),
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
  toleranceMs: z.number().positive().default(20).describe('Colour and depth frames further apart than this (ms) are not a pair; both are counted and dropped.'),
  pairBy: z
    .enum(['time', 'order'])
    .default('time')
    .describe('time: pair by arrival (live cameras); order: by frame index (file sources, where arrival times say nothing).'),
  /** Metres per 16-bit depth unit (0.001 for millimetre depth maps); a pixel value of 0 is "no measurement". */
  metresPerUnit: z.number().positive().default(0.001),
});
export type DepthSource = z.infer<typeof DepthSourceSchema>;

export const SourceSchema = sourceUnion({
  reconnect: ReconnectSchema.prefault({}).describe('Reconnection after the camera stops or fails.'),
  depth: DepthSourceSchema.optional().describe('RGB-D: a second stream delivering 16-bit depth (GRAY16_LE), paired with colour frames.'),
});
export type Source = z.infer<typeof SourceSchema>;
/** The stream part of a source (what a launch string is built from). */
export type StreamSource = z.infer<typeof TestSourceSchema> | z.infer<typeof FileSourceSchema> | z.infer<typeof V4l2SourceSchema>
  | z.infer<typeof RtspSourceSchema> | z.infer<typeof AravisSourceSchema> | z.infer<typeof PipelineSourceSchema>;

const ModelSchema = z.strictObject({
  bundle: z
    .string()
    .min(1)
    .describe("A bundle folder or .tar (a model store path once updates exist); relative to the config file's folder. Env: AST_EDGE_MODEL_BUNDLE."),
  providers: z
    .array(ProviderSchema)
    .min(1)
    .default([{ name: 'cpu', arena: true }])
    .describe('Execution providers tried in order (tensorrt, cuda, cpu); the first that loads runs the model. A bare name takes its defaults.'),
  intraOpThreads: z.int().min(0).default(0).describe("Threads inside one operator (0: ONNX Runtime's choice, one per core)."),
  interOpThreads: z.int().min(0).default(0).describe("Threads across independent operators (0: ONNX Runtime's choice)."),
  spinWait: z.boolean().default(false).describe('ONNX Runtime threads spin while waiting: lower latency, but they burn cores GStreamer may need.'),
  warmupRuns: z.int().min(0).default(1).describe('Inference runs at start so the first part is not slow.'),
  threshold: z
    .number()
    .gt(0)
    .lt(1)
    .optional()
    .describe("Overrides the bundle's calibrated threshold, as a normalised score in (0, 1); 0.5 is the calibrated one."),
});

const TlsSchema = z.strictObject({
  ca: z.string().optional().describe("CA certificate (PEM) the broker's certificate must chain to; relative to the config file's folder."),
  cert: z.string().optional().describe('Client certificate (PEM), for brokers that authenticate clients by certificate.'),
  key: z.string().optional().describe('Private key (PEM) of the client certificate.'),
  rejectUnauthorized: z.boolean().default(true).describe('false only for test rigs with self-signed brokers.'),
});

/** Sparkplug ids are topic levels: no wildcards, no separator. */
const SPARKPLUG_ID = /^[^+#/]+$/;
const SPARKPLUG_ID_MESSAGE = 'must be non-empty without "+", "#" or "/"';

export const MqttSchema = z.strictObject({
  url: z
    .string()
    .regex(/^(mqtts?|wss?):\/\//, 'must start with mqtt://, mqtts://, ws:// or wss://')
    .optional()
    .describe('Broker: mqtt://, mqtts://, ws:// or wss://. Absent: an in-process broker on embeddedPort (demo, bench). Env: AST_EDGE_MQTT_URL.'),
  embeddedPort: z.int().min(0).max(65535).default(1883).describe('Port of the in-process broker when url is absent.'),
  topicPrefix: z
    .string()
    .regex(/^[A-Za-z0-9_./-]+$/, 'must be topic levels without wildcards')
    .default('ast')
    .describe('Topics are <topicPrefix>/<station>/...; e.g. ast/plant-a/line1.'),
  username: z.string().optional().describe('Env: AST_EDGE_MQTT_USERNAME.'),
  password: z.string().optional().describe('Prefer the environment variable AST_EDGE_MQTT_PASSWORD (in /etc/ast-edge/env) over writing it here.'),
  clientId: z.string().optional().describe('MQTT client id; must be unique on the broker.'),
  tls: TlsSchema.optional().describe('TLS settings for mqtts:// and wss://.'),
  protocolVersion: z.union([z.literal(5), z.literal(4)]).default(5).describe('5 (MQTT 5) or 4 (MQTT 3.1.1, for older brokers).'),
  keepaliveS: z.int().min(0).default(30).describe('Keep-alive interval in seconds; the broker declares the agent gone after 1.5 times this.'),
  outbox: z
    .strictObject({
      maxMiB: z.number().positive().default(512).describe('Journal size bound; beyond it the oldest unsent results are dropped and counted.'),
      maxAgeHours: z.number().positive().default(168).describe('Unsent results older than this are dropped and counted.'),
      inlineWriteBudgetMs: z
        .number()
        .min(0)
        .max(100)
        .default(4)
        .describe(
          'Journal writes run on the main thread (no thread hop on a reject\'s path) while each takes at most this long; a slower one moves them to the I/O thread pool for 30 s. 0: always the thread pool (slow SD cards).',
        ),
    })
    .prefault({})
    .describe('Store and forward: results and rejects are journaled on disk until the broker acknowledges them.'),
  heatmap: z
    .strictObject({
      maxPerSecond: z.number().positive().default(1).describe('Rate limit; heat maps beyond it are skipped, never queued.'),
      verdicts: z.array(z.enum(['pass', 'reject', 'error'])).min(1).default(['reject']).describe('Which verdicts get a heat map.'),
      maxSide: z.int().min(16).max(4096).default(512).describe('Longest side of the PNG, pixels.'),
    })
    .optional()
    .describe('Anomaly-map overlays as PNG on <prefix>/<station>/heatmap (QoS 0). Absent: none.'),
  metricsIntervalS: z.number().min(0).default(10).describe('Seconds between metrics messages; 0 turns them off.'),
  sparkplug: z
    .strictObject({
      groupId: z.string().regex(SPARKPLUG_ID, SPARKPLUG_ID_MESSAGE).describe('Sparkplug group id.'),
      edgeNodeId: z.string().regex(SPARKPLUG_ID, SPARKPLUG_ID_MESSAGE).optional().describe('Edge node id; default: the station id.'),
      deviceId: z.string().regex(SPARKPLUG_ID, SPARKPLUG_ID_MESSAGE).default('camera').describe('Device id of the camera.'),
      primaryHostId: z.string().regex(SPARKPLUG_ID, SPARKPLUG_ID_MESSAGE).optional().describe('Wait for this primary host to be ONLINE before births.'),
      clientId: z.string().optional().describe('MQTT client id of the Sparkplug session (its will is the NDEATH); must differ from clientId.'),
      reconnectMs: z.int().min(100).default(2000).describe('Wait between reconnect attempts, ms.'),
      allowThresholdWrites: z.boolean().default(true).describe('Accept DCMD writes of Config/Threshold.'),
      storeWhileOffline: z
        .int()
        .min(0)
        .default(10_000)
        .describe('Results held in memory while the Sparkplug session is down, sent after the next birth as historical DDATA (oldest dropped beyond this; 0 = off).'),
    })
    .optional()
    .describe('Also publish as a Sparkplug B 3.0 edge node (spBv1.0/<groupId>/...), on the same broker.'),
});

const TriggerSchema = z.discriminatedUnion('mode', [
  z.strictObject({
    mode: z.literal('continuous').describe('Inspect frames as they come.'),
    every: z.int().min(1).default(1).describe('Inspect every n-th frame.'),
  }),
  z.strictObject({
    mode: z
      .literal('external')
      .describe('A part-present message (MQTT <topicPrefix>/<station>/trigger) selects the next frame captured after it.'),
    maxWaitMs: z.int().min(1).default(1000).describe('Longest wait (ms) for a frame after a trigger.'),
  }),
]);

const InspectionSchema = z.strictObject({
  trigger: TriggerSchema.prefault({ mode: 'continuous' }).describe('Which frames are inspected.'),
  deadlineMs: z.int().min(1).default(2000).describe('A part without a verdict this long (ms) after capture gets verdict error and a reject.'),
  maxBatch: z.int().min(1).max(64).default(1).describe('Frames scored in one run when several are waiting (batching pays on GPUs).'),
  queueLength: z
    .int()
    .min(1)
    .max(256)
    .default(2)
    .describe('Frames waiting for the detector; beyond this the oldest are dropped at the source and counted.'),
});

const HttpSchema = z.strictObject({
  port: z.int().min(0).max(65535).default(9108).describe('GET /healthz and Prometheus GET /metrics; 0 picks a free port (tests). Env: AST_EDGE_HTTP_PORT.'),
  host: z.string().default('0.0.0.0').describe('Address to listen on; 127.0.0.1 keeps health and metrics local.'),
});

const UpdatesSchema = z.strictObject({
  trustedKeys: z
    .array(z.string().min(1))
    .default([])
    .describe('Ed25519 public keys (.pub files from `ast-agent keygen`) whose signatures are accepted; several for key rotation.'),
  allowUnsigned: z
    .boolean()
    .default(false)
    .describe('Accept unsigned bundles. Development only: logged loudly at start and on every install.'),
  keepVersions: z.int().min(2).max(20).default(3).describe('Model versions kept in the store (the active and the previous one are never removed).'),
  maxBundleMiB: z.number().positive().default(1024).describe('Largest bundle accepted (download or chunks).'),
  downloadTimeoutS: z.number().positive().default(300).describe('A download with no progress for this long is abandoned.'),
  caFile: z
    .string()
    .optional()
    .describe("CA certificate(s) (PEM) an https update server's certificate must chain to, instead of the system's CAs (a plant's own CA); relative to the config file's folder."),
  transferTimeoutS: z.number().positive().default(120).describe('A chunked transfer with no chunk for this long is abandoned and cleaned up.'),
  probation: z
    .strictObject({
      inspections: z.int().min(0).default(20).describe('Inspections watched after a swap; 0 turns automatic rollback off.'),
      maxErrorRate: z.number().min(0).max(1).default(0.2).describe('Roll back when more of the watched inspections than this fail (verdict error).'),
      maxScoreShift: z
        .number()
        .positive()
        .default(8)
        .describe('Roll back when the median raw score of the watched inspections is more than this many good-score standard deviations from the calibrated good mean.'),
    })
    .prefault({})
    .describe('Automatic rollback after an update.'),
});

export const AgentConfigSchema = z.strictObject({
  station: z
    .string()
    .regex(TOPIC_LEVEL, 'must be letters, digits, ".", "_" or "-" (it is an MQTT topic level)')
    .describe('This station: an MQTT topic level and Sparkplug device id (letters, digits, ".", "_", "-").'),
  source: SourceSchema,
  model: ModelSchema.describe('The model bundle and how ONNX Runtime runs it.'),
  mqtt: MqttSchema.prefault({}).describe('Where results, rejects and availability are published.'),
  inspection: InspectionSchema.prefault({}).describe('Triggering, deadlines and batching.'),
  http: HttpSchema.prefault({}).describe('Health and metrics endpoint.'),
  updates: UpdatesSchema.prefault({}).describe('Remote model updates: trust, store, limits, automatic rollback.'),
  stateDir: z
    .string()
    .default('/var/lib/ast-edge')
    .describe('Durable state: outbox, run-time settings, model store. Must be writable (systemd ReadWritePaths). Env: AST_EDGE_STATE_DIR.'),
  log: z
    .strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info').describe('Log level.') })
    .prefault({}),
}).describe('Configuration of the ast-edge inspection agent (ast-agent run --config FILE).');
export type AgentConfig = z.infer<typeof AgentConfigSchema>;

/** How ONNX Runtime runs this station's detectors (the same for the running model and every update). */
export function runtimeOptionsOf(model: AgentConfig['model']): Partial<RuntimeOptions> {
  const { providers, intraOpThreads, interOpThreads, spinWait, warmupRuns } = model;
  return { providers, intraOpThreads, interOpThreads, spinWait, warmupRuns };
}
