/**
 * A bundle's graphs loaded on ONNX Runtime: score feature maps (head graph) or whole frames (fused
 * detector graph), in batches, with warm-up so the first real part is not the slow one.
 */
import * as ort from 'onnxruntime-node';
import type { Logger } from 'pino';
import type { RuntimeOptions } from '../config/runtime-schema.js';
import { readBundleFile, type LoadedBundle } from '../bundle/bundle-store.js';
import { IO } from '../model/detector-graph.js';
import type { HostTensor } from '../onnx/tensor.js';
import type { ProviderName } from '../config/runtime-schema.js';
import { loadSession, RuntimeError } from './session.js';

export interface DetectorResult {
  /** Anomaly maps at feature resolution, [N, h, w] row-major. */
  map: Float32Array;
  /** Full-size maps [N, H, W] (detector graph only). */
  mapFull?: Float32Array;
  scoreMax: Float32Array;
  scoreMean: Float32Array;
  batch: number;
}

export interface DepthInputs {
  /** Prepared depth [N, 1, 8h, 8w]. */
  depth: HostTensor<'float32'>;
  /** Foreground mask [N, 1, h, w]. */
  mask: HostTensor<'float32'>;
}

export type GraphKind = 'head' | 'detector';

export class Detector {
  private constructor(
    readonly bundle: LoadedBundle,
    readonly kind: GraphKind,
    private readonly session: ort.InferenceSession,
    readonly provider: ProviderName,
    private readonly fullMap: boolean,
  ) {}

  /** `fullMap: false` skips the input-size anomaly map (the agent never needs it). */
  static async load(
    bundle: LoadedBundle,
    kind: GraphKind,
    runtime: Partial<RuntimeOptions> = {},
    logger?: Logger,
    options: { fullMap?: boolean } = {},
  ): Promise<Detector> {
    const file = kind === 'head' ? bundle.manifest.graphs.head : bundle.manifest.graphs.detector;
    if (!file) {
      throw new RuntimeError(`bundle ${bundle.source} has no ${kind} graph (a feature-level bundle: import it with --backbone to score frames)`);
    }
    const loaded = await loadSession(await readBundleFile(bundle, file), runtime, logger?.child({ bundle: bundle.manifest.id, graph: kind }));
    const detector = new Detector(bundle, kind, loaded.session, loaded.provider, options.fullMap ?? true);
    for (let i = 0; i < (runtime.warmupRuns ?? 1); i++) await detector.warmup();
    return detector;
  }

  /** An in-thread session has no separate thread to lose. */
  get failure(): Error | null {
    return null;
  }

  get featureShape(): [number, number, number] {
    const m = this.bundle.manifest;
    return [m.model.featureChannels, m.featureSize.height, m.featureSize.width];
  }

  private depthFeeds(depth: DepthInputs | undefined): Record<string, ort.Tensor> {
    if (this.bundle.manifest.model.depthChannels === 0) return {};
    if (!depth) throw new RuntimeError(`model ${this.bundle.manifest.id} runs in ${this.bundle.manifest.model.mode} mode and needs depth and mask inputs`);
    return {
      [IO.depth]: new ort.Tensor('float32', depth.depth.data, [...depth.depth.dims]),
      [IO.mask]: new ort.Tensor('float32', depth.mask.data, [...depth.mask.dims]),
    };
  }

  private async run(feeds: Record<string, ort.Tensor>, batch: number): Promise<DetectorResult> {
    // The full-size map is only fetched when asked for (evaluation): the agent scores on the small map.
    const wanted = this.fullMap ? this.session.outputNames : this.session.outputNames.filter((n) => n !== IO.mapFull);
    const out = await this.session.run(feeds, wanted);
    const get = (name: string) => out[name]?.data as Float32Array | undefined;
    const result: DetectorResult = {
      map: get(IO.map)!,
      scoreMax: get(IO.scoreMax)!,
      scoreMean: get(IO.scoreMean)!,
      batch,
    };
    const full = get(IO.mapFull);
    if (full) result.mapFull = full;
    return result;
  }

  /** Scores backbone features [N, C, h, w] with the head graph. */
  async scoreFeatures(features: HostTensor<'float32'> | null, depth?: DepthInputs): Promise<DetectorResult> {
    if (this.kind !== 'head') throw new RuntimeError('scoreFeatures needs the head graph');
    const [c, h, w] = this.featureShape;
    const feeds = this.depthFeeds(depth);
    let batch = depth?.depth.dims[0] ?? 1;
    if (c > 0) {
      if (!features) throw new RuntimeError('this model needs features');
      const [n, fc, fh, fw] = features.dims;
      if (features.dims.length !== 4 || fc !== c || fh !== h || fw !== w) {
        throw new RuntimeError(`features have shape [${features.dims.join(', ')}] but bundle ${this.bundle.manifest.id} expects [N, ${c}, ${h}, ${w}]`);
      }
      feeds[IO.features] = new ort.Tensor('float32', features.data, [...features.dims]);
      batch = n!;
    }
    return this.run(feeds, batch);
  }

  /** Scores frames: uint8 RGB, NHWC, [N, H, W, 3] at the bundle's input size. */
  async inspect(images: HostTensor<'uint8'> | null, depth?: DepthInputs): Promise<DetectorResult> {
    if (this.kind !== 'detector') throw new RuntimeError('inspect needs the detector graph');
    const { width, height } = this.bundle.manifest.input;
    const feeds = this.depthFeeds(depth);
    let batch = depth?.depth.dims[0] ?? 1;
    if (this.bundle.manifest.model.featureChannels > 0) {
      if (!images) throw new RuntimeError('this model needs images');
      const [n, ih, iw, ic] = images.dims;
      if (images.dims.length !== 4 || ih !== height || iw !== width || ic !== 3) {
        throw new RuntimeError(`frames have shape [${images.dims.join(', ')}] but bundle ${this.bundle.manifest.id} expects [N, ${height}, ${width}, 3]`);
      }
      feeds[IO.image] = new ort.Tensor('uint8', images.data, [...images.dims]);
      batch = n!;
    }
    return this.run(feeds, batch);
  }

  /** One run on zeros: allocates buffers and (on GPU) builds engines before the first real part. */
  async warmup(batch = 1): Promise<void> {
    const m = this.bundle.manifest;
    const [c, h, w] = this.featureShape;
    const r = m.model.depth?.unshuffle ?? 8;
    const depth: DepthInputs | undefined =
      m.model.depthChannels > 0
        ? {
            depth: { dtype: 'float32', dims: [batch, 1, h * r, w * r], data: new Float32Array(batch * h * r * w * r) },
            mask: { dtype: 'float32', dims: [batch, 1, h, w], data: new Float32Array(batch * h * w).fill(1) },
          }
        : undefined;
    if (this.kind === 'head') {
      await this.scoreFeatures(c > 0 ? { dtype: 'float32', dims: [batch, c, h, w], data: new Float32Array(batch * c * h * w) } : null, depth);
    } else {
      const { width, height } = m.input;
      await this.inspect(
        c > 0 ? { dtype: 'uint8', dims: [batch, height, width, 3], data: new Uint8Array(batch * height * width * 3) } : null,
        depth,
      );
    }
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
