/** Test helper: a small random (γ ≠ 0) model written as a feature-level bundle. */
import { assembleBundle, type AssembleInput } from '../../src/bundle/assemble.js';
import { modelParamsFor, type Mode } from '../../src/config/model-schema.js';
import { initStudent, initTeacher } from '../../src/model/init.js';

export const TINY = { channels: 8, h: 4, w: 6 };

export function tinyModel(mode: Mode = 'rgb', featureChannels = TINY.channels) {
  const base = modelParamsFor('edge', mode, featureChannels);
  const params = {
    ...base,
    teacher: { ...base.teacher, hidden: 8 },
    student: { ...base.student, width: 16, residualBlocks: 1 },
  };
  const channels = params.featureChannels + params.depthChannels;
  const teacher = initTeacher({ channels, condChannels: params.posChannels, hidden: 8, kernelSizes: params.teacher.kernelSizes, seed: 1, gamma: 0.5 });
  const student = initStudent({ inChannels: params.posChannels + channels, outChannels: channels, width: 16, residualBlocks: 1, seed: 2 });
  return { params, teacher, student };
}

/** What writeTinyBundle assembles: a feature-level bundle, or for mode depth one with a detector graph too. */
export function tinyBundleInput(mode: Mode = 'rgb', id = 'tiny'): AssembleInput {
  const { params, teacher, student } = tinyModel(mode, mode === 'depth' ? 0 : TINY.channels);
  return {
    id,
    version: '0.1.0',
    preset: 'custom',
    params,
    teacher,
    student,
    input: { width: TINY.w * 8, height: TINY.h * 8, mean: [0, 0, 0], std: [1, 1, 1] },
    backbone: null,
    featureSize: { height: TINY.h, width: TINY.w },
    calibration: { threshold: 1, goodMean: 0.5, goodStd: 0.2, method: 'manual', samples: 0 },
    provenance: { source: 'synthetic', tool: 'test', createdAt: new Date().toISOString() },
  };
}

export async function writeTinyBundle(dir: string, mode: Mode = 'rgb', id = 'tiny') {
  return assembleBundle(dir, tinyBundleInput(mode, id));
}
