/**
 * ONNX Runtime sessions with execution-provider fallback: each configured provider is tried in order
 * and the first that loads runs the model; one log line says what runs and why the others did not.
 */
import * as ort from 'onnxruntime-node';
import type { Logger } from 'pino';
import { RuntimeOptionsSchema, type ProviderConfig, type ProviderName, type RuntimeOptions } from '../config/runtime-schema.js';

export class RuntimeError extends Error {
  constructor(
    message: string,
    readonly attempts: ProviderAttempt[] = [],
  ) {
    super(message);
    this.name = 'RuntimeError';
  }
}

export interface ProviderAttempt {
  provider: ProviderName;
  error: string;
}

export interface LoadedSession {
  session: ort.InferenceSession;
  provider: ProviderName;
  /** Providers tried before the one that runs, with why they failed. */
  fallbacks: ProviderAttempt[];
}

function providerOption(p: ProviderConfig): ort.InferenceSession.ExecutionProviderConfig {
  switch (p.name) {
    case 'tensorrt':
      // onnxruntime-node passes only the device id to TensorRT; the engine options are read by the
      // TensorRT provider from its documented environment variables, set here before the session loads.
      process.env.ORT_TENSORRT_FP16_ENABLE = p.fp16 ? '1' : '0';
      process.env.ORT_TENSORRT_ENGINE_CACHE_ENABLE = '1';
      process.env.ORT_TENSORRT_CACHE_PATH = p.cachePath;
      process.env.ORT_TENSORRT_TIMING_CACHE_ENABLE = '1';
      return { name: 'tensorrt', deviceId: p.deviceId };
    case 'cuda':
      return { name: 'cuda', deviceId: p.deviceId };
    case 'cpu':
      return { name: 'cpu', useArena: p.arena };
  }
}

export function sessionOptions(options: RuntimeOptions, provider: ProviderConfig): ort.InferenceSession.SessionOptions {
  // A GPU provider leaves unsupported nodes to the CPU provider, so CPU is always appended.
  const providers = provider.name === 'cpu' ? [providerOption(provider)] : [providerOption(provider), 'cpu'];
  return {
    executionProviders: providers,
    graphOptimizationLevel: 'all',
    ...(options.intraOpThreads > 0 ? { intraOpNumThreads: options.intraOpThreads } : {}),
    ...(options.interOpThreads > 0 ? { interOpNumThreads: options.interOpThreads } : {}),
    logSeverityLevel: 3,
    extra: { session: { intra_op: { allow_spinning: options.spinWait ? '1' : '0' }, inter_op: { allow_spinning: options.spinWait ? '1' : '0' } } },
  };
}

/** Loads `model` on the first provider of `options.providers` that works. */
export async function loadSession(model: Uint8Array | string, input: Partial<RuntimeOptions> = {}, logger?: Logger): Promise<LoadedSession> {
  const options = RuntimeOptionsSchema.parse(input);
  const fallbacks: ProviderAttempt[] = [];
  for (const provider of options.providers) {
    try {
      const opts = sessionOptions(options, provider);
      const session =
        typeof model === 'string' ? await ort.InferenceSession.create(model, opts) : await ort.InferenceSession.create(model, opts);
      const tried = fallbacks.map((f) => `${f.provider} unavailable: ${f.error}`).join('; ');
      logger?.info(
        { provider: provider.name, fallbacks, threads: options.intraOpThreads || 'auto' },
        `inference runs on ${provider.name}${tried ? ` (${tried})` : ''}`,
      );
      return { session, provider: provider.name, fallbacks };
    } catch (e) {
      fallbacks.push({ provider: provider.name, error: (e as Error).message.split('\n')[0]! });
    }
  }
  throw new RuntimeError(
    `no execution provider could load the model: ${fallbacks.map((f) => `${f.provider}: ${f.error}`).join('; ')}`,
    fallbacks,
  );
}
