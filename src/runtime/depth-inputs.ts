/**
 * Raw depth frames (z in metres, 0 = missing) → the detector's `depth` and `mask` inputs, with the
 * preprocessing parameters the bundle was trained with.
 */
import type { BundleManifest } from '../config/bundle-manifest.js';
import { prepareDepth, type PreparedDepth } from '../model/depth.js';
import { f32 } from '../onnx/tensor.js';
import type { DepthInputs } from './detector.js';

export interface RawDepthFrame {
  z: Float32Array;
  height: number;
  width: number;
}

/** One raw z map prepared with the bundle's depth parameters, at 8× its feature size. */
export function prepareDepthFor(manifest: Pick<BundleManifest, 'model' | 'featureSize'>, f: RawDepthFrame): PreparedDepth {
  const d = manifest.model.depth;
  if (!d) throw new Error(`a ${manifest.model.mode} model takes no depth`);
  const { height: h, width: w } = manifest.featureSize;
  return prepareDepth(f.z, f.height, f.width, {
    fillIterations: d.gapFillIterations,
    threshold: d.foregroundThreshold,
    dilation: d.dilation,
    cornerSize: d.cornerSize,
    background: d.background,
    featureStride: d.unshuffle,
    depthScale: d.depthScale,
    outputSize: { height: h * d.unshuffle, width: w * d.unshuffle },
  });
}

export function depthInputsFor(manifest: BundleManifest, frames: readonly RawDepthFrame[]): DepthInputs {
  const d = manifest.model.depth;
  if (!d) throw new Error(`bundle ${manifest.id} runs in ${manifest.model.mode} mode and takes no depth`);
  const { height: h, width: w } = manifest.featureSize;
  const outH = h * d.unshuffle;
  const outW = w * d.unshuffle;
  const depth = new Float32Array(frames.length * outH * outW);
  const mask = new Float32Array(frames.length * h * w);
  frames.forEach((f, i) => {
    const p = prepareDepthFor(manifest, f);
    depth.set(p.depth, i * outH * outW);
    mask.set(p.featureMask, i * h * w);
  });
  return { depth: f32([frames.length, 1, outH, outW], depth), mask: f32([frames.length, 1, h, w], mask) };
}
