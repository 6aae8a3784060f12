/**
 * Analytic FLOP counts (2 × multiply–accumulates of every convolution, as a direct convolution computes
 * them) for the AST parts and for an ONNX backbone. Element-wise ops, the anomaly map and the transforms
 * of fast algorithms are not counted: "GFLOP/s" below is direct-convolution work per second.
 */
import type { DecodedModel } from '../src/onnx/serialize.js';

export interface TeacherShapeSpec {
  channels: number;
  cond: number;
  hidden: number;
  kernels: readonly number[];
}

export interface StudentShapeSpec {
  inChannels: number;
  width: number;
  blocks: number;
  outChannels: number;
}

/** Per image: every coupling has two subnets, conv k×k (C/2 + cond → hidden) and conv k×k (hidden → 2·C/2). */
export function teacherFlops(t: TeacherShapeSpec, h: number, w: number): number {
  const len1 = Math.floor(t.channels / 2);
  const len2 = t.channels - len1;
  let macs = 0;
  for (const k of t.kernels) {
    const s2 = (len2 + t.cond) * t.hidden * k * k + t.hidden * 2 * len1 * k * k;
    const s1 = (len1 + t.cond) * t.hidden * k * k + t.hidden * 2 * len2 * k * k;
    macs += s1 + s2;
  }
  return 2 * macs * h * w;
}

/** Per image: conv3×3 in → width, 2 convs 3×3 width → width per residual block, conv3×3 width → out. */
export function studentFlops(s: StudentShapeSpec, h: number, w: number): number {
  const macs = 9 * (s.inChannels * s.width + 2 * s.blocks * s.width * s.width + s.width * s.outChannels);
  return 2 * macs * h * w;
}

type Attr = { name?: string; ints?: number[]; s?: Uint8Array | { data: number[] }; i?: number };

function attrInts(a: Attr[] | undefined, name: string): number[] | undefined {
  return a?.find((x) => x.name === name)?.ints?.map(Number);
}

function attrString(a: Attr[] | undefined, name: string): string | undefined {
  const s = a?.find((x) => x.name === name)?.s;
  if (!s) return undefined;
  const bytes = s instanceof Uint8Array ? s : Uint8Array.from((s as { data: number[] }).data);
  return new TextDecoder().decode(bytes);
}

/**
 * Per image: walks an NCHW ONNX graph from its input size, propagating spatial sizes through Conv
 * (explicit or SAME pads, strides; other ops keep the size of their first sized input) and counts every
 * Conv's MACs (grouped convs count C_in/group). Enough for the MobileNetV2 backbone (Conv, Clip, Add).
 */
export function onnxConvFlops(model: DecodedModel, inputName: string, height: number, width: number): number {
  const dims = new Map(model.graph.initializer?.map((t) => [t.name!, (t.dims ?? []).map(Number)]) ?? []);
  const spatial = new Map<string, [number, number]>([[inputName, [height, width]]]);
  let macs = 0;
  for (const n of model.graph.node ?? []) {
    const inputs = n.input ?? [];
    const first = inputs.map((i) => spatial.get(i)).find((s) => s);
    if (!first) continue;
    let out: [number, number] = first;
    if (n.op_type === 'Conv') {
      const w = dims.get(inputs[1]!);
      if (!w || w.length !== 4) throw new Error(`conv ${n.name} has no static weight`);
      const a = n.attribute as Attr[] | undefined;
      const strides = attrInts(a, 'strides') ?? [1, 1];
      const dil = attrInts(a, 'dilations') ?? [1, 1];
      const autoPad = attrString(a, 'auto_pad') ?? 'NOTSET';
      const pads = attrInts(a, 'pads') ?? [0, 0, 0, 0];
      const k = [w[2]!, w[3]!];
      out = [0, 1].map((d) => {
        const size = first[d]!;
        if (autoPad.startsWith('SAME')) return Math.ceil(size / strides[d]!);
        if (autoPad === 'VALID') return Math.floor((size - dil[d]! * (k[d]! - 1) - 1) / strides[d]!) + 1;
        return Math.floor((size + pads[d]! + pads[d + 2]! - dil[d]! * (k[d]! - 1) - 1) / strides[d]!) + 1;
      }) as [number, number];
      macs += out[0] * out[1] * w[0]! * w[1]! * k[0]! * k[1]!;
    }
    for (const o of n.output ?? []) spatial.set(o, out);
  }
  return 2 * macs;
}
