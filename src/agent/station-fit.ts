/**
 * Whether a bundle fits this station: the one place that says so, for the model the agent starts with
 * (a refusal to start) and for a model pushed as an update (a refused update). Pure: manifest and config in,
 * the first problem out, with the config key it concerns.
 */
import type { AgentConfig } from '../config/agent-schema.js';
import type { BundleManifest } from '../config/bundle-manifest.js';

export interface StationMisfit {
  /** The config key an operator would change (or the bundle to replace). */
  key: 'model.bundle' | 'source.depth';
  message: string;
}

/**
 * The first reason `next` cannot run on this station, or null. `current` is the model running now (for an
 * update): the camera pipeline is built for its input size, and changing that needs a restart.
 */
export function stationMisfit(config: AgentConfig, next: BundleManifest, current: BundleManifest | null = null): StationMisfit | null {
  if (!next.calibration) {
    return {
      key: 'model.bundle',
      message: `bundle ${next.id} has no calibration (no decision threshold); train it with \`ast-agent train\`, which calibrates on held-out good parts`,
    };
  }
  if (!next.graphs.detector) {
    return { key: 'model.bundle', message: `bundle ${next.id} has no fused detector graph (a feature-level bundle cannot score camera frames)` };
  }
  const needsDepth = next.model.depthChannels > 0;
  if (needsDepth && !config.source.depth) {
    return { key: 'source.depth', message: `model ${next.id} runs in ${next.model.mode} mode and needs a depth stream, which this station does not have` };
  }
  if (!needsDepth && config.source.depth) {
    return { key: 'source.depth', message: `model ${next.id} runs in rgb mode; remove the depth stream or deploy an rgbd model` };
  }
  if (current && (current.input.width !== next.input.width || current.input.height !== next.input.height)) {
    return {
      key: 'model.bundle',
      message: `model ${next.id} takes ${next.input.width}×${next.input.height} frames; the camera pipeline delivers ${current.input.width}×${current.input.height} (a restart is needed for that)`,
    };
  }
  return null;
}
