/**
 * The camera layer's public surface. The agent opens a source with `openSource` and receives Frames;
 * GStreamer stays behind gst-frame-source.ts.
 */
export { CameraError, type CameraErrorKind } from './camera-error.js';
export {
  openSource,
  type CameraReport,
  type CapturedFrame,
  type DropReason,
  type FrameSource,
  type OpenSourceOptions,
} from './camera-source.js';
export { bytesPerPixel, depthValues, type Frame, type PixelFormat } from './frame.js';
export {
  GstFrameSource,
  threadPoolAdvice,
  type GstFrameSourceOptions,
  type RunEndCause,
  type SourceState,
  type SourceStatus,
} from './gst-frame-source.js';
export { buildLaunchString, describeSource, type OutputSpec } from './launch-string.js';
export {
  FramePairer,
  type FramePair,
  type PairBy,
  type PairerCounters,
  type PairerOptions,
  type StreamName,
} from './rgbd-pairer.js';
