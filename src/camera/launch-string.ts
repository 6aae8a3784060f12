/**
 * Builds GStreamer launch strings: a source part per preset, then the agent's tail that converts and
 * scales to the model's input and ends in the appsink the frame source pulls from. Pure functions (no
 * file system, no GStreamer), so every string can be checked in tests.
 */
import type { StreamSource } from '../config/agent-schema.js';
import { CameraError } from './camera-error.js';
import type { PixelFormat } from './frame.js';
import type { ImageSequence } from './image-sequence.js';

/** The appsink's name; unusual so that it cannot collide with a name inside a custom pipeline. */
export const APPSINK_NAME = 'ast_edge_sink';

export interface OutputSpec {
  format: PixelFormat;
  width: number;
  height: number;
}

/**
 * How the appsink buffers. It never holds more than `maxBuffers` decoded frames, so a slow consumer
 * can never make the agent queue frames without bound.
 * - Live cameras (`drop`): when JS falls behind, the oldest waiting frame is discarded and the agent
 *   always gets the freshest image; a camera cannot be paused, and an inspection wants the part that is
 *   in front of the lens now. Two rather than one: the next frame can land while the previous one is
 *   still on its way through the binding's worker thread, so at the nominal rate nothing is dropped.
 * - Files (no `drop`, `sync`): the appsink blocks the decoder instead (back-pressure), so no image is
 *   skipped (pairing by order depends on it) and `sync` paces them at the configured fps.
 */
export interface SinkPolicy {
  maxBuffers: number;
  drop: boolean;
  /** Release frames at their timestamps (pacing); live sources are paced by the camera already. */
  sync: boolean;
}

export function sinkPolicyFor(source: StreamSource): SinkPolicy {
  switch (source.kind) {
    case 'file':
      return { maxBuffers: 2, drop: false, sync: true };
    case 'pipeline':
      // Unknown origin: a recorded video must be paced (sync), and a camera must not back up (drop).
      return { maxBuffers: 2, drop: true, sync: true };
    default:
      return { maxBuffers: 2, drop: true, sync: false };
  }
}

/** True when the source is a camera-like stream whose end means "gone, try again" rather than "done". */
export function isFiniteSource(source: StreamSource): boolean {
  return source.kind === 'file' && !source.loop;
}

/**
 * A property value for gst_parse_launch: always double-quoted, with `\` and `"` escaped, so paths with
 * spaces, quotes or `!` arrive unchanged (checked by reading the property back).
 */
export function quoteValue(value: string): string {
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** A frame rate as the exact fraction GStreamer caps need (7.5 → 15/2, 29.97 → 2997/100). */
export function framerateFraction(fps: number): string {
  if (!(fps > 0) || !Number.isFinite(fps)) throw new RangeError(`frame rate must be positive, got ${fps}`);
  let denominator = 1;
  while (Math.abs(Math.round(fps * denominator) - fps * denominator) > 1e-6 && denominator < 1000) denominator *= 10;
  const numerator = Math.round(fps * denominator);
  const divisor = gcd(numerator, denominator);
  return `${numerator / divisor}/${denominator / divisor}`;
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

/** `rtsp://user:secret@host/x` → `rtsp://user:***@host/x`: descriptions end up in logs and MQTT. */
export function redactUrl(text: string): string {
  return text.replace(/(\w+:\/\/[^/@:\s"]*):[^/@\s"]*@/g, '$1:***@');
}

/** A short human description of a source for logs, states and errors. */
export function describeSource(source: StreamSource): string {
  switch (source.kind) {
    case 'test':
      return `test source (${source.pattern}, ${source.fps} fps)`;
    case 'file':
      return `file source ${source.path}`;
    case 'v4l2':
      return `V4L2 camera ${source.device}`;
    case 'rtsp':
      return `RTSP stream ${redactUrl(source.url)}`;
    case 'aravis':
      return `GigE Vision camera ${source.camera ?? '(first found)'}`;
    case 'pipeline':
      return `custom pipeline "${redactUrl(source.pipeline)}"`;
  }
}

/** Refuses custom pipelines that would fight the agent's own appsink. */
export function checkCustomPipeline(pipeline: string, sourceDescription: string): void {
  if (/\bappsink\b/i.test(pipeline)) {
    throw new CameraError(
      'a custom pipeline must not contain an appsink: the agent appends conversion, scaling and its own appsink',
      sourceDescription,
      'config',
    );
  }
  if (pipeline.includes(APPSINK_NAME)) {
    throw new CameraError(`the name ${APPSINK_NAME} is reserved for the agent's appsink`, sourceDescription, 'config');
  }
}

/**
 * The source part of the launch string. For `file`, `images` is the resolved sequence (staging folder or
 * checked pattern) since the raw path may be a folder, which multifilesrc cannot read.
 */
export function sourceSegment(source: StreamSource, images?: ImageSequence): string {
  switch (source.kind) {
    case 'test': {
      const limit = source.numBuffers === undefined ? '' : ` num-buffers=${source.numBuffers}`;
      return (
        `videotestsrc pattern=${source.pattern} is-live=true${limit}` +
        ` ! video/x-raw,framerate=${framerateFraction(source.fps)}`
      );
    }
    case 'file': {
      if (!images) throw new Error('a file source needs its resolved image sequence');
      const caps = `image/${images.codec},framerate=${framerateFraction(source.fps)}`;
      const decoder = images.codec === 'png' ? 'pngdec' : 'jpegdec';
      return (
        `multifilesrc location=${quoteValue(images.pattern)} start-index=${images.startIndex}` +
        ` index=${images.startIndex} loop=${source.loop} caps=${quoteValue(caps)} ! ${decoder}`
      );
    }
    case 'v4l2':
      // decodebin passes raw video through and decodes MJPEG, which many USB cameras deliver at full size.
      return `v4l2src device=${quoteValue(source.device)} ! decodebin`;
    case 'rtsp':
      return `rtspsrc location=${quoteValue(source.url)} latency=${source.latencyMs} ! decodebin`;
    case 'aravis':
      return source.camera === undefined ? 'aravissrc' : `aravissrc camera-name=${quoteValue(source.camera)}`;
    case 'pipeline':
      return source.pipeline.trim().replace(/\s*!\s*$/, '');
  }
}

/**
 * The agent's tail: convert, scale to the model input, fix the format, then the bounded appsink. Depth
 * is scaled nearest-neighbour: interpolating between a surface and the background invents depths that
 * exist nowhere (bilinear turned neighbours 1000 and 65535 into 33269 in a check); when the size already
 * matches, videoscale passes buffers through and 16-bit values arrive exactly.
 */
export function outputSegment(output: OutputSpec, policy: SinkPolicy): string {
  const scale = output.format === 'GRAY16_LE' ? 'videoscale method=nearest-neighbour' : 'videoscale';
  return (
    `videoconvert ! ${scale} ! video/x-raw,format=${output.format},width=${output.width},height=${output.height}` +
    ` ! appsink name=${APPSINK_NAME} max-buffers=${policy.maxBuffers} drop=${policy.drop} sync=${policy.sync}` +
    ' enable-last-sample=false'
  );
}

export function buildLaunchString(source: StreamSource, output: OutputSpec, images?: ImageSequence): string {
  if (source.kind === 'pipeline') checkCustomPipeline(source.pipeline, describeSource(source));
  return `${sourceSegment(source, images)} ! ${outputSegment(output, sinkPolicyFor(source))}`;
}

/**
 * Where each element the presets use comes from on Debian/Ubuntu. aravissrc ships inside the aravis
 * library package itself (libaravis-0.8-0 on Debian 12 holds gstreamer-1.0/libgstaravis.0.8.so);
 * rtspsrc is in plugins-good (gstreamer1.0-rtsp is the RTSP *server* library, not needed here).
 */
const DEBIAN_PACKAGE: Record<string, string> = {
  videotestsrc: 'gstreamer1.0-plugins-base',
  videoconvert: 'gstreamer1.0-plugins-base',
  videoscale: 'gstreamer1.0-plugins-base',
  appsink: 'gstreamer1.0-plugins-base',
  decodebin: 'gstreamer1.0-plugins-base',
  multifilesrc: 'gstreamer1.0-plugins-good',
  pngdec: 'gstreamer1.0-plugins-good',
  jpegdec: 'gstreamer1.0-plugins-good',
  v4l2src: 'gstreamer1.0-plugins-good',
  rtspsrc: 'gstreamer1.0-plugins-good',
  aravissrc: 'libaravis-0.8-0 (Debian 12; the GStreamer plugin is inside the aravis library package)',
  bayer2rgb: 'gstreamer1.0-plugins-bad',
  avdec_h264: 'gstreamer1.0-libav',
  avdec_h265: 'gstreamer1.0-libav',
};

export function debianPackageFor(element: string): string | undefined {
  return DEBIAN_PACKAGE[element];
}

/** Turns gst_parse_launch's error text into a CameraError that says what to install or fix. */
export function explainLaunchError(message: string, launch: string, sourceDescription: string): CameraError {
  const missing = /no element "([^"]+)"/.exec(message)?.[1];
  if (missing) {
    const debianPackage = debianPackageFor(missing);
    const hint = debianPackage
      ? `install ${debianPackage}`
      : `find the plugin that provides it (gst-inspect-1.0 ${missing}; apt-file search libgst)`;
    return new CameraError(`GStreamer element "${missing}" is not installed: ${hint}`, sourceDescription, 'missing-element');
  }
  return new CameraError(`GStreamer cannot build the pipeline (${message}): ${redactUrl(launch)}`, sourceDescription, 'pipeline');
}

/** Extra advice for run-time errors whose GStreamer text does not say what to do. */
export function hintForRuntimeError(text: string): string | undefined {
  if (/missing a plug-in/i.test(text)) {
    return 'a decoder is missing: H.264/H.265 streams need gstreamer1.0-libav (or gstreamer1.0-plugins-bad)';
  }
  if (/not-negotiated/i.test(text)) {
    return 'the stream format could not be converted to the model input (a Bayer camera needs bayer2rgb from gstreamer1.0-plugins-bad in a custom pipeline)';
  }
  return undefined;
}
