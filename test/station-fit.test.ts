/** stationMisfit: the one rule for whether a bundle fits a station, at start-up and for an update. */
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { stationMisfit } from '../src/agent/station-fit.js';
import { AgentConfigSchema } from '../src/config/agent-schema.js';
import type { BundleManifest } from '../src/config/bundle-manifest.js';
import { tempDir } from './helpers/agent-bundle.js';
import { writeTinyBundle } from './helpers/tiny-bundle.js';

let depthModel: BundleManifest;
const depthSource = { kind: 'test', depth: { kind: 'test' } } as const;
const config = (source: Record<string, unknown>) => AgentConfigSchema.parse({ station: 's', source, model: { bundle: 'x' } });

beforeAll(async () => {
  depthModel = await writeTinyBundle(join(await tempDir('fit'), 'b'), 'depth', 'dm');
});

describe('stationMisfit', () => {
  it('accepts a calibrated fused model whose streams and input size match', () => {
    expect(depthModel.graphs.detector).toBeDefined();
    expect(stationMisfit(config(depthSource), depthModel)).toBeNull();
    expect(stationMisfit(config(depthSource), depthModel, depthModel)).toBeNull();
  });

  it('names the key and the reason of the first misfit', () => {
    expect(stationMisfit(config(depthSource), { ...depthModel, calibration: null })).toEqual({
      key: 'model.bundle',
      message: 'bundle dm has no calibration (no decision threshold); train it with `ast-agent train`, which calibrates on held-out good parts',
    });
    const { detector: _, ...headOnly } = depthModel.graphs;
    expect(stationMisfit(config(depthSource), { ...depthModel, graphs: headOnly })).toEqual({
      key: 'model.bundle',
      message: 'bundle dm has no fused detector graph (a feature-level bundle cannot score camera frames)',
    });
    expect(stationMisfit(config({ kind: 'test' }), depthModel)).toEqual({
      key: 'source.depth',
      message: 'model dm runs in depth mode and needs a depth stream, which this station does not have',
    });
    const rgbModel = { ...depthModel, model: { ...depthModel.model, mode: 'rgb' as const, depthChannels: 0 } };
    expect(stationMisfit(config(depthSource), rgbModel)).toEqual({
      key: 'source.depth',
      message: 'model dm runs in rgb mode; remove the depth stream or deploy an rgbd model',
    });
    const wider = { ...depthModel, input: { ...depthModel.input, width: depthModel.input.width * 2 } };
    expect(stationMisfit(config(depthSource), wider, depthModel)?.message).toBe(
      `model dm takes ${wider.input.width}×${wider.input.height} frames; the camera pipeline delivers ${depthModel.input.width}×${depthModel.input.height} (a restart is needed for that)`,
    );
    // At start-up there is no running model to compare with: any input size is fine.
    expect(stationMisfit(config(depthSource), wider)).toBeNull();
  });
});
