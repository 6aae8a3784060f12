/** zod schemas for how inference runs: execution providers in order of preference, and threading. */
import { z } from 'zod';

const TensorRtSchema = z.object({
  name: z.literal('tensorrt'),
  deviceId: z.int().min(0).default(0),
  /** Build fp16 engines (Jetson and most NVIDIA GPUs run them ~2× faster). */
  fp16: z.boolean().default(true),
  /** Where serialized TensorRT engines and timing caches are kept; they are tied to the TensorRT version and GPU. */
  cachePath: z.string().default('/var/lib/ast-edge/trt-cache'),
});

const CudaSchema = z.object({ name: z.literal('cuda'), deviceId: z.int().min(0).default(0) });
const CpuSchema = z.object({ name: z.literal('cpu'), arena: z.boolean().default(true) });

export const ProviderSchema = z.preprocess(
  (v) => (typeof v === 'string' ? { name: v } : v),
  z.discriminatedUnion('name', [TensorRtSchema, CudaSchema, CpuSchema]),
);
export type ProviderConfig = z.infer<typeof ProviderSchema>;
export type ProviderName = ProviderConfig['name'];

export const RuntimeOptionsSchema = z.object({
  /** Tried in order; the first that loads runs the model. CPU is always the last resort. */
  providers: z.array(ProviderSchema).min(1).default([{ name: 'cpu', arena: true }]),
  /** Threads inside one operator (0: ONNX Runtime's choice, one per core). */
  intraOpThreads: z.int().min(0).default(0),
  /** Threads across independent operators (0: ONNX Runtime's choice). */
  interOpThreads: z.int().min(0).default(0),
  /** ORT worker threads spin while waiting: lower latency, but burns cores another process may need. */
  spinWait: z.boolean().default(false),
  /** Inference runs on the model at start so the first part is not slow. */
  warmupRuns: z.int().min(0).default(1),
});
export type RuntimeOptions = z.infer<typeof RuntimeOptionsSchema>;
