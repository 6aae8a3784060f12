/**
 * Test helpers for the agent: a small calibrated bundle with the real backbone (fused detector graph),
 * PNG part folders, and agent configs in temp folders.
 */
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import sharp from 'sharp';
import { assembleBundle, type AssembleInput } from '../../src/bundle/assemble.js';
import { goldenFromInputs } from '../../src/train/trainer.js';
import { AgentConfigSchema, type AgentConfig } from '../../src/config/agent-schema.js';
import type { Calibration } from '../../src/config/bundle-manifest.js';
import { ensureDefaultBackbone } from '../../src/model/backbone/mobilenet-v2.js';
import { depthInputsFor, type RawDepthFrame } from '../../src/runtime/depth-inputs.js';
import { tinyBundleInput, tinyModel } from './tiny-bundle.js';

export const BRICK = '/usr/lib/python3/dist-packages/skimage/data/brick.png';

export const silentLogger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

interface AgentBundleOptions {
  id?: string;
  version?: string;
  size?: number;
  calibration?: Calibration | null;
  createdAt?: string;
}

/** What assembleBundle takes for a fused RGB bundle: the real MobileNetV2 backbone, a tiny random head, `size`×`size`. */
export async function agentBundleInput(o: AgentBundleOptions = {}): Promise<AssembleInput> {
  const backbone = await ensureDefaultBackbone({});
  const { params, teacher, student } = tinyModel('rgb', backbone.outputs.reduce((s, x) => s + x.channels, 0));
  const size = o.size ?? 64;
  return {
    id: o.id ?? 'agent-test',
    version: o.version ?? '1.0.0',
    preset: 'custom',
    params,
    teacher,
    student,
    input: { width: size, height: size, mean: backbone.input.mean, std: backbone.input.std },
    backbone: {
      bytes: await readFile(backbone.file),
      name: backbone.family,
      description: 'test',
      inputName: backbone.input.name,
      outputs: backbone.outputs.map((x) => ({ name: x.name, layer: x.layer, channels: x.channels, stride: x.stride })),
    },
    calibration: o.calibration === undefined ? { threshold: 1, goodMean: 0.5, goodStd: 0.25, method: 'manual', samples: 0 } : o.calibration,
    provenance: { source: 'synthetic', tool: 'test', createdAt: o.createdAt ?? new Date().toISOString() },
  };
}

/** A fused RGB bundle (see agentBundleInput), calibrated unless told otherwise; `golden` adds self-test samples. */
export async function writeAgentBundle(dir: string, o: AgentBundleOptions & { golden?: boolean } = {}): Promise<string> {
  const input = await agentBundleInput(o);
  const size = input.input.width;
  await assembleBundle(dir, input);
  if (o.golden) {
    // Two brick crops scored by the bundle's own detector: what the device's self-test must reproduce.
    const frames = await Promise.all([0, 150].map((at) => sharp(BRICK).extract({ left: at, top: at, width: size, height: size }).toColourspace('srgb').raw().toBuffer()));
    const images = new Uint8Array(frames.length * size * size * 3);
    frames.forEach((f, i) => images.set(f, i * size * size * 3));
    await assembleBundle(dir, { ...input, golden: await goldenFromInputs(dir, { images }, frames.length) });
  }
  return dir;
}

/** `count` PNG crops of the brick texture named part-000.png…, each a different crop. */
export async function writePartFolder(dir: string, count: number, size = 96): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const names: string[] = [];
  for (let i = 0; i < count; i++) {
    const name = `part-${String(i).padStart(3, '0')}.png`;
    await sharp(BRICK).extract({ left: (i * 37) % 400, top: (i * 53) % 400, width: size, height: size }).toColourspace('srgb').png().toFile(join(dir, name));
    names.push(name);
  }
  return names;
}

export async function tempDir(prefix: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `ast-${prefix}-`));
}

/** A complete, validated config (test source, no MQTT url: callers add one) with its state in a temp folder. */
export function agentConfig(bundle: string, stateDir: string, extra: Record<string, unknown> = {}): AgentConfig {
  return AgentConfigSchema.parse({
    station: 'st1',
    source: { kind: 'test', pattern: 'ball', fps: 10 },
    model: { bundle, intraOpThreads: 1, warmupRuns: 1 },
    http: { port: 0, host: '127.0.0.1' },
    stateDir,
    mqtt: { metricsIntervalS: 0 },
    ...extra,
  });
}

export async function writeYaml(file: string, text: string): Promise<string> {
  await writeFile(file, text);
  return file;
}

/**
 * Depth in millimetres of a tilted table at ~500 mm with a box raised 10·(k+1) mm whose width grows with
 * `k`: frames that differ, so a depth model scores them differently.
 */
export function boxOnTableMm(k: number, width: number, height: number): Uint16Array {
  const mm = new Uint16Array(width * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const box = x >= 10 && x < 20 + 4 * k && y >= 8 && y < 20;
      mm[y * width + x] = 500 + Math.round(x / 8) - (box ? 10 * (k + 1) : 0);
    }
  }
  return mm;
}

/** boxOnTableMm as raw z frames in metres (what the agent hands the depth preparation). */
export function boxOnTableFrames(count: number, width: number, height: number): RawDepthFrame[] {
  return Array.from({ length: count }, (_, k) => ({ z: Float32Array.from(boxOnTableMm(k, width, height), (v) => v / 1000), height, width }));
}

/** Colour PNGs and 16-bit depth PNGs (boxOnTableMm) named 0.png… in `<dir>/rgb` and `<dir>/depth`. */
export async function writeRgbdFrames(dir: string, count: number, width: number, height: number): Promise<{ rgb: string; depth: string }> {
  const rgb = join(dir, 'rgb');
  const depth = join(dir, 'depth');
  await mkdir(rgb, { recursive: true });
  await mkdir(depth, { recursive: true });
  for (let i = 0; i < count; i++) {
    await sharp({ create: { width, height, channels: 3, background: { r: 40 * i, g: 100, b: 50 } } }).png().toFile(join(rgb, `${i}.png`));
    // sharp takes the typed array's element size as the sample depth: a Uint16Array gives a 16-bit PNG.
    await sharp(boxOnTableMm(i, width, height), { raw: { width, height, channels: 1 } }).toColourspace('grey16').png().toFile(join(depth, `${i}.png`));
  }
  return { rgb, depth };
}

/** A small depth-only bundle (detector graph, no backbone) with golden samples: prepared boxOnTable frames. */
export async function writeDepthBundle(dir: string, id: string, version = '1.0.0'): Promise<string> {
  const input = { ...tinyBundleInput('depth', id), version };
  const plain = await assembleBundle(dir, input);
  const depth = depthInputsFor(plain, boxOnTableFrames(3, plain.input.width, plain.input.height));
  await assembleBundle(dir, { ...input, golden: await goldenFromInputs(dir, { depth }, 3) });
  return dir;
}
