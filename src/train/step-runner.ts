/**
 * Runs a training-step graph repeatedly while the host keeps the training state (weights, Adam moments,
 * BatchNorm running statistics, step count). ONNX Runtime writes each step's updated state straight into
 * pre-allocated buffers that become the next step's inputs (two sets, swapped every step), so the state
 * is never copied through JavaScript.
 */
import * as ort from 'onnxruntime-node';
import type { Logger } from 'pino';
import type { RuntimeOptions } from '../config/runtime-schema.js';
import { f32, type HostTensor } from '../onnx/tensor.js';
import { loadSession } from '../runtime/session.js';
import { adamScalars, type AdamOptions } from './adam.js';
import type { ParamSpec, TrainStepGraph } from './train-graphs.js';

interface Buffers {
  param: Float32Array;
  m?: Float32Array;
  v?: Float32Array;
}

export interface TrainingState {
  step: number;
  /** by state_dict key */
  params: Map<string, Float32Array>;
  m: Map<string, Float32Array>;
  v: Map<string, Float32Array>;
}

export interface StepBatch {
  x: Float32Array;
  target?: Float32Array;
  mask?: Float32Array;
}

export class TrainStepRunner {
  private current = new Map<string, Buffers>();
  private next = new Map<string, Buffers>();
  step = 0;

  private constructor(
    private readonly graph: TrainStepGraph,
    private readonly session: ort.InferenceSession,
    private readonly adam: AdamOptions,
    readonly provider: string,
  ) {}

  static async create(
    graph: TrainStepGraph,
    initial: Map<string, HostTensor>,
    adam: AdamOptions,
    runtime: Partial<RuntimeOptions> = {},
    logger?: Logger,
  ): Promise<TrainStepRunner> {
    const loaded = await loadSession(graph.model, runtime, logger);
    const runner = new TrainStepRunner(graph, loaded.session, adam, loaded.provider);
    for (const spec of graph.params) {
      const t = initial.get(spec.key);
      if (!t) throw new Error(`initial training state lacks "${spec.key}"`);
      if (t.data.length !== spec.shape.reduce((a, b) => a * b, 1)) {
        throw new Error(`initial "${spec.key}" has ${t.data.length} values, the graph expects shape [${spec.shape}]`);
      }
      const fresh = (): Buffers => ({
        param: new Float32Array(t.data.length),
        ...(spec.trainable ? { m: new Float32Array(t.data.length), v: new Float32Array(t.data.length) } : {}),
      });
      const cur = fresh();
      cur.param.set(t.data as Float32Array);
      runner.current.set(spec.key, cur);
      runner.next.set(spec.key, fresh());
    }
    return runner;
  }

  get params(): readonly ParamSpec[] {
    return this.graph.params;
  }

  /** One optimizer step on a batch; returns the loss before the update. */
  async run(batch: StepBatch): Promise<number> {
    return (await this.runWithOutputs(batch)).loss;
  }

  /** A step that also returns any extra graph outputs (e.g. exposed gradients), by name. */
  async runWithOutputs(batch: StepBatch): Promise<{ loss: number; extra: Record<string, Float32Array> }> {
    const g = this.graph;
    const step = this.step + 1;
    const s = adamScalars(this.adam, step);
    const feeds: Record<string, ort.Tensor> = {};
    const fetches: Record<string, ort.Tensor> = {};
    const scalar = (v: number) => new ort.Tensor('float32', Float32Array.of(v), []);
    feeds.adam_step_size = scalar(s.stepSize);
    feeds.adam_inv_sqrt_bias2 = scalar(s.invSqrtBias2);
    feeds.adam_lr = scalar(s.lr);
    const dims = (p: ParamSpec) => p.shape;
    const xShape = g.xShape;
    if (batch.x.length !== xShape.reduce((a, b) => a * b, 1)) {
      throw new Error(`training batch has ${batch.x.length} values, the step expects [${xShape.join(', ')}]`);
    }
    feeds[g.inputs.x] = new ort.Tensor('float32', batch.x, xShape);
    if (g.inputs.target) {
      if (!batch.target) throw new Error('this training step needs targets');
      feeds[g.inputs.target] = new ort.Tensor('float32', batch.target, xShape);
    }
    if (g.inputs.mask) {
      if (!batch.mask) throw new Error('this training step needs a foreground mask');
      feeds[g.inputs.mask] = new ort.Tensor('float32', batch.mask, [g.batch, 1, xShape[2]!, xShape[3]!]);
    }
    for (const p of g.params) {
      const n = g.names(p.key);
      const cur = this.current.get(p.key)!;
      const nxt = this.next.get(p.key)!;
      feeds[n.param] = new ort.Tensor('float32', cur.param, dims(p));
      fetches[n.paramOut] = new ort.Tensor('float32', nxt.param, dims(p));
      if (p.trainable) {
        feeds[n.m] = new ort.Tensor('float32', cur.m!, dims(p));
        feeds[n.v] = new ort.Tensor('float32', cur.v!, dims(p));
        fetches[n.mOut] = new ort.Tensor('float32', nxt.m!, dims(p));
        fetches[n.vOut] = new ort.Tensor('float32', nxt.v!, dims(p));
      }
    }
    const lossOut = new ort.Tensor('float32', new Float32Array(1), []);
    fetches[g.loss] = lossOut;
    const extraNames = this.session.outputNames.filter((n) => !(n in fetches));
    const out = await this.session.run(feeds, { ...fetches, ...Object.fromEntries(extraNames.map((n) => [n, null])) });
    [this.current, this.next] = [this.next, this.current];
    this.step = step;
    const extra = Object.fromEntries(extraNames.map((n) => [n, out[n]!.data as Float32Array]));
    return { loss: (lossOut.data as Float32Array)[0]!, extra };
  }

  /** Current weights (and running statistics) by state_dict key, copied. */
  weights(): Map<string, HostTensor<'float32'>> {
    const out = new Map<string, HostTensor<'float32'>>();
    for (const p of this.graph.params) out.set(p.key, f32(p.shape, this.current.get(p.key)!.param));
    return out;
  }

  /** Everything needed to resume exactly: weights, moments, step. */
  state(): TrainingState {
    const params = new Map<string, Float32Array>();
    const m = new Map<string, Float32Array>();
    const v = new Map<string, Float32Array>();
    for (const p of this.graph.params) {
      const b = this.current.get(p.key)!;
      params.set(p.key, b.param.slice());
      if (b.m) m.set(p.key, b.m.slice());
      if (b.v) v.set(p.key, b.v.slice());
    }
    return { step: this.step, params, m, v };
  }

  restore(state: TrainingState): void {
    for (const p of this.graph.params) {
      const b = this.current.get(p.key)!;
      const param = state.params.get(p.key);
      if (!param || param.length !== b.param.length) throw new Error(`checkpoint lacks or mis-sizes "${p.key}"`);
      b.param.set(param);
      if (b.m) b.m.set(state.m.get(p.key) ?? new Float32Array(b.m.length));
      if (b.v) b.v.set(state.v.get(p.key) ?? new Float32Array(b.v.length));
    }
    this.step = state.step;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
