/**
 * The fused detector on a worker thread. onnxruntime-node runs a session synchronously on the calling
 * thread, so on the main thread every inference would freeze the event loop for its whole duration:
 * camera frames could not be pulled (GStreamer would drop them uncounted), deadline timers could not
 * fire, and MQTT acknowledgements and outbox writes would wait. On its own thread the detector blocks
 * nothing; frames and results are transferred, not copied.
 */
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { readBundle, type LoadedBundle } from '../bundle/bundle-store.js';
import type { ProviderName, RuntimeOptions } from '../config/runtime-schema.js';
import type { HostTensor } from '../onnx/tensor.js';
import type { DepthInputs, DetectorResult } from './detector.js';
import { RuntimeError } from './session.js';

/** What the inspection loop needs of a detector (the in-thread Detector and this class both fit). */
export interface FrameScorer {
  readonly bundle: LoadedBundle;
  readonly provider: ProviderName;
  readonly featureShape: [number, number, number];
  inspect(images: HostTensor<'uint8'> | null, depth?: DepthInputs): Promise<DetectorResult>;
  release(): Promise<void>;
  /** Set when the scorer can no longer run (a crashed thread): every part would fail. */
  readonly failure: Error | null;
}

type Reply =
  | { kind: 'ready'; provider: ProviderName }
  | { kind: 'failed'; message: string }
  | { kind: 'result'; id: number; result: DetectorResult }
  | { kind: 'error'; id: number; message: string }
  | { kind: 'released'; id: number };

export class DetectorThread implements FrameScorer {
  private nextId = 0;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private exited: Error | null = null;

  private constructor(
    readonly bundle: LoadedBundle,
    readonly provider: ProviderName,
    private readonly worker: Worker,
  ) {
    worker.on('message', (m: Reply) => {
      if (m.kind !== 'result' && m.kind !== 'error' && m.kind !== 'released') return;
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      if (m.kind === 'error') w.reject(new RuntimeError(m.message));
      else w.resolve(m.kind === 'result' ? m.result : undefined);
    });
    const fail = (e: Error) => {
      this.exited = e;
      for (const w of this.waiting.values()) w.reject(e);
      this.waiting.clear();
    };
    worker.on('error', (e) => fail(new RuntimeError(`detector thread crashed: ${e.message}`)));
    worker.on('exit', (code) => {
      if (!this.released) fail(new RuntimeError(`detector thread exited (code ${code})`));
    });
  }

  /** Loads the bundle in a new thread; resolves once the session is built and warmed up there. */
  static async load(bundlePath: string, runtime: Partial<RuntimeOptions>, logger?: Logger): Promise<DetectorThread> {
    const bundle = await readBundle(bundlePath);
    if (!bundle.manifest.graphs.detector) {
      throw new RuntimeError(`bundle ${bundle.source} has no detector graph (a feature-level bundle: import it with --backbone to score frames)`);
    }
    const worker = new Worker(new URL('./detector-thread-entry.js', import.meta.url), { workerData: { bundlePath: bundle.dir, runtime } });
    const provider = await new Promise<ProviderName>((resolve, reject) => {
      const onMessage = (m: Reply) => {
        if (m.kind === 'ready') resolve(m.provider);
        else if (m.kind === 'failed') reject(new RuntimeError(m.message));
        else return;
        worker.off('message', onMessage);
      };
      worker.on('message', onMessage);
      worker.once('error', (e) => reject(new RuntimeError(`detector thread failed to start: ${e.message}`)));
      worker.once('exit', (code) => reject(new RuntimeError(`detector thread exited while loading (code ${code})`)));
    }).catch(async (e) => {
      await worker.terminate();
      throw e;
    });
    logger?.info({ bundle: bundle.manifest.id, provider }, 'detector thread ready');
    return new DetectorThread(bundle, provider, worker);
  }

  get failure(): Error | null {
    return this.exited;
  }

  get featureShape(): [number, number, number] {
    const m = this.bundle.manifest;
    return [m.model.featureChannels, m.featureSize.height, m.featureSize.width];
  }

  private request<T>(message: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<T> {
    if (this.exited) return Promise.reject(this.exited);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.worker.postMessage({ ...message, id }, transfer);
    });
  }

  /** Scores frames; the frame buffers are moved to the thread (the caller must not reuse them). */
  inspect(images: HostTensor<'uint8'> | null, depth?: DepthInputs): Promise<DetectorResult> {
    const transfer: ArrayBuffer[] = [];
    if (images) transfer.push(images.data.buffer as ArrayBuffer);
    if (depth) transfer.push(depth.depth.data.buffer as ArrayBuffer, depth.mask.data.buffer as ArrayBuffer);
    return this.request<DetectorResult>({ kind: 'inspect', images, ...(depth ? { depth } : {}) }, transfer);
  }

  /** Frees the session in the thread (bounded: a wedged thread is terminated anyway after 1 s). */
  async release(): Promise<void> {
    if (!this.exited) {
      await Promise.race([this.request({ kind: 'release' }).catch(() => undefined), new Promise((r) => setTimeout(r, 1000).unref())]);
    }
    this.released = true;
    await this.worker.terminate();
  }

  private released = false;
}
