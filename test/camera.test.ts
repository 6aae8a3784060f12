/**
 * The camera layer against real GStreamer pipelines (videotestsrc, multifilesrc over PNG/JPEG folders
 * made here with sharp), plus the pure pieces: launch strings and RGB-D pairing.
 *
 * Fixtures are written before any pipeline runs: every running pipeline keeps libuv pool threads
 * blocked, which would slow sharp and async fs down (see threadPoolAdvice).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Source, StreamSource } from '../src/config/agent-schema.js';
import { SourceSchema } from '../src/config/agent-schema.js';
import {
  CameraError,
  FramePairer,
  GstFrameSource,
  depthValues,
  openSource,
  threadPoolAdvice,
  type CapturedFrame,
  type Frame,
  type FrameSource,
  type GstFrameSourceOptions,
  type SourceStatus,
} from '../src/camera/index.js';
import {
  buildLaunchString,
  describeSource,
  framerateFraction,
  quoteValue,
} from '../src/camera/launch-string.js';
import { formatPattern, listFolderImages } from '../src/camera/image-sequence.js';
import { until } from './support/wait.js';

const silent = pino({ level: 'silent' });

let root: string;
const dirs = {
  /** PNGs named out of order, with a space and a quote in the folder name. */
  colours: '',
  depth: '',
  depthScaled: '',
  jpeg: '',
  mixed: '',
  empty: '',
  pattern: '',
  pairColour: '',
  pairDepth: '',
  orderColour: '',
  orderDepth: '',
  vanishing: '',
};
/** Colours of `colours` in the order the source must deliver them (name order: a, b, c9, c10). */
const NAME_ORDER_COLOURS: [number, number, number][] = [
  [10, 20, 30],
  [200, 0, 100],
  [0, 255, 1],
  [77, 77, 250],
];
const DEPTH_VALUES = [0, 1, 1000, 65535];
/** One pixel per depth image holds this value: bytes 0x01 0x02 in a distinctive order. */
const MARKER = 0x0102;

function solidPng(file: string, width: number, height: number, rgb: [number, number, number]): Promise<unknown> {
  const [r, g, b] = rgb;
  return sharp({ create: { width, height, channels: 3, background: { r, g, b } } }).png().toFile(file);
}

function grey16Png(file: string, width: number, height: number, values: Uint16Array): Promise<unknown> {
  return sharp(values, { raw: { width, height, channels: 1 } }).toColourspace('grey16').png().toFile(file);
}

beforeAll(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'ast-camera-test-'));
  for (const key of Object.keys(dirs) as (keyof typeof dirs)[]) {
    dirs[key] = path.join(root, key === 'colours' ? 'colour "frames" dir' : key);
    fs.mkdirSync(dirs[key]);
  }
  const names = ['a.png', 'b.png', 'c9.png', 'c10.png'];
  // Written in reverse so that creation order says nothing about name order.
  for (let i = names.length - 1; i >= 0; i--) await solidPng(path.join(dirs.colours, names[i]!), 8, 6, NAME_ORDER_COLOURS[i]!);
  fs.writeFileSync(path.join(dirs.colours, 'notes.txt'), 'not an image');

  for (const [i, value] of DEPTH_VALUES.entries()) {
    const values = new Uint16Array(5 * 3).fill(value);
    values[7] = MARKER;
    await grey16Png(path.join(dirs.depth, `d${i}.png`), 5, 3, values);
  }
  // A 4x4 checkerboard of two depths: scaling to 2x2 must only ever pick, never blend.
  const board = new Uint16Array(16).map((_, i) => ((i % 4) + Math.floor(i / 4)) % 2 === 0 ? 1000 : 65535);
  await grey16Png(path.join(dirs.depthScaled, 'board.png'), 4, 4, board);

  await sharp({ create: { width: 8, height: 6, channels: 3, background: { r: 200, g: 40, b: 90 } } })
    .jpeg({ quality: 100 })
    .toFile(path.join(dirs.jpeg, 'one.jpg'));
  await solidPng(path.join(dirs.mixed, 'a.png'), 4, 4, [1, 2, 3]);
  await sharp({ create: { width: 4, height: 4, channels: 3, background: { r: 1, g: 2, b: 3 } } })
    .jpeg()
    .toFile(path.join(dirs.mixed, 'b.jpg'));
  for (const i of [1, 2, 3]) await solidPng(path.join(dirs.pattern, `shot-${String(i).padStart(3, '0')}.png`), 4, 4, [i * 50, 0, 0]);

  // RGB-D pairs: image i is red 40*i in colour and depth 1000+i, so a pair shows whether it matches.
  for (let i = 0; i < 5; i++) {
    await solidPng(path.join(dirs.pairColour, `${i}.png`), 6, 4, [40 * i, 0, 0]);
    await grey16Png(path.join(dirs.pairDepth, `${i}.png`), 6, 4, new Uint16Array(24).fill(1000 + i));
  }
  fs.cpSync(dirs.pairColour, dirs.orderColour, { recursive: true });
  fs.cpSync(dirs.pairDepth, dirs.orderDepth, { recursive: true });
  for (const i of [0, 1]) await solidPng(path.join(dirs.vanishing, `${i}.png`), 4, 4, [0, 0, 100 + i]);
}, 60_000);

afterAll(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

const open: { stop(): Promise<void> }[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.stop()));
});

const RECONNECT = { initialMs: 40, maxMs: 160 };

function frameSource(source: StreamSource, options: Partial<GstFrameSourceOptions> = {}): GstFrameSource {
  const s = new GstFrameSource({
    source,
    output: { format: 'RGB', width: 10, height: 7 },
    reconnect: RECONNECT,
    logger: silent,
    ...options,
  });
  open.push(s);
  return s;
}

function camera(config: unknown, size = { width: 6, height: 4 }): FrameSource {
  const s = openSource(SourceSchema.parse(config), size, silent);
  open.push(s);
  return s;
}


function record(source: GstFrameSource): { frames: Frame[]; states: SourceStatus[] } {
  const seen = { frames: [] as Frame[], states: [] as SourceStatus[] };
  source.onFrame((f) => seen.frames.push(f));
  source.onState((s) => seen.states.push(s));
  return seen;
}

function pixel(frame: Frame, i: number): number[] {
  return [...frame.data.subarray(i * 3, i * 3 + 3)];
}

function everyPixelIs(frame: Frame, rgb: number[]): boolean {
  for (let i = 0; i < frame.width * frame.height; i++) if (pixel(frame, i).join() !== rgb.join()) return false;
  return true;
}

// ---- launch strings (pure) ------------------------------------------------------------------------

describe('launch strings', () => {
  const rgb = { format: 'RGB', width: 10, height: 7 } as const;

  it('builds the test preset with the agent tail and a bounded, dropping appsink', () => {
    const launch = buildLaunchString({ kind: 'test', pattern: 'ball', fps: 7.5, numBuffers: 5 }, rgb);
    expect(launch).toBe(
      'videotestsrc pattern=ball is-live=true num-buffers=5 ! video/x-raw,framerate=15/2' +
        ' ! videoconvert ! videoscale ! video/x-raw,format=RGB,width=10,height=7' +
        ' ! appsink name=ast_edge_sink max-buffers=2 drop=true sync=false enable-last-sample=false',
    );
  });

  it('scales depth nearest-neighbour to GRAY16_LE', () => {
    const launch = buildLaunchString({ kind: 'v4l2', device: '/dev/video2' }, { format: 'GRAY16_LE', width: 4, height: 2 });
    expect(launch).toContain('v4l2src device="/dev/video2" ! decodebin ! videoconvert');
    expect(launch).toContain('videoscale method=nearest-neighbour ! video/x-raw,format=GRAY16_LE,width=4,height=2');
  });

  it('paces file sources and applies back-pressure instead of dropping', () => {
    const launch = buildLaunchString({ kind: 'file', path: '/x', loop: false, fps: 29.97 }, rgb, {
      pattern: '/tmp/my "odd" dir/%06d.png',
      startIndex: 0,
      codec: 'png',
    });
    expect(launch).toContain('multifilesrc location="/tmp/my \\"odd\\" dir/%06d.png" start-index=0 index=0 loop=false');
    expect(launch).toContain('caps="image/png,framerate=2997/100" ! pngdec');
    expect(launch).toContain('max-buffers=2 drop=false sync=true');
  });

  it('quotes RTSP URLs, keeps credentials out of descriptions, and handles aravis with and without a name', () => {
    const rtsp = { kind: 'rtsp', url: 'rtsp://admin:s3cret@10.0.0.5/stream?x=1&y=2', latencyMs: 50 } as const;
    expect(buildLaunchString(rtsp, rgb)).toContain('rtspsrc location="rtsp://admin:s3cret@10.0.0.5/stream?x=1&y=2" latency=50 ! decodebin');
    expect(describeSource(rtsp)).toBe('RTSP stream rtsp://admin:***@10.0.0.5/stream?x=1&y=2');
    expect(buildLaunchString({ kind: 'aravis', camera: 'Basler-123' }, rgb)).toMatch(/^aravissrc camera-name="Basler-123" ! videoconvert/);
    expect(buildLaunchString({ kind: 'aravis' }, rgb)).toMatch(/^aravissrc ! videoconvert/);
    expect(quoteValue('a\\b')).toBe('"a\\\\b"');
  });

  it('lists a folder in natural name order as absolute paths (staging links must not be relative)', () => {
    const { files, codec } = listFolderImages(path.relative(process.cwd(), dirs.colours), 'test');
    expect(codec).toBe('png');
    expect(files.map((f) => path.basename(f))).toEqual(['a.png', 'b.png', 'c9.png', 'c10.png']);
    expect(files.every((f) => path.isAbsolute(f))).toBe(true);
  });

  it('writes frame rates as exact fractions and formats printf patterns like multifilesrc', () => {
    expect(framerateFraction(10)).toBe('10/1');
    expect(framerateFraction(0.5)).toBe('1/2');
    expect(formatPattern('/a/shot-%03d.png', 7)).toBe('/a/shot-007.png');
    expect(formatPattern('/a/%d-100%%.png', 12)).toBe('/a/12-100%.png');
  });

  it('refuses a custom pipeline that already has an appsink', () => {
    const custom = { kind: 'pipeline', pipeline: 'videotestsrc ! appsink name=mine' } as const;
    expect(() => buildLaunchString(custom, rgb)).toThrow(/must not contain an appsink/);
    expect(() => frameSource(custom)).toThrow(CameraError);
    expect(() => camera({ pipeline: 'videotestsrc ! appsink' })).toThrow(/must not contain an appsink/);
  });

  it('advises a larger libuv pool when pipelines would occupy it', () => {
    const saved = process.env.UV_THREADPOOL_SIZE;
    try {
      delete process.env.UV_THREADPOOL_SIZE;
      expect(threadPoolAdvice(2)).toMatch(/UV_THREADPOOL_SIZE=6/);
      expect(threadPoolAdvice(1)).toBeUndefined();
      process.env.UV_THREADPOOL_SIZE = '16';
      expect(threadPoolAdvice(2)).toBeUndefined();
    } finally {
      if (saved === undefined) delete process.env.UV_THREADPOOL_SIZE;
      else process.env.UV_THREADPOOL_SIZE = saved;
    }
  });
});

// ---- RGB-D pairing (pure) -------------------------------------------------------------------------

function fake(index: number, capturedAt: number, format: Frame['format'] = 'RGB'): Frame {
  return { format, width: 1, height: 1, data: new Uint8Array(format === 'RGB' ? 3 : 2), capturedAt, capturedAtWall: 0, index };
}
const ids = (pairs: { colour: Frame; depth: Frame }[]) => pairs.map((p) => [p.colour.index, p.depth.index]);

describe('FramePairer', () => {
  it('pairs by order and never shifts after a lost frame (a naive zip would)', () => {
    const pairer = new FramePairer({ pairBy: 'order', toleranceMs: 20 });
    const pairs = [];
    // Colour numbering starts at 50 (an older source), depth at 0; depth frame 2 is lost.
    for (const i of [0, 1, 2, 3, 4]) {
      pairs.push(...pairer.pushColour(fake(50 + i, i)));
      if (i !== 2) pairs.push(...pairer.pushDepth(fake(i, i, 'GRAY16_LE')));
    }
    expect(ids(pairs)).toEqual([[50, 0], [51, 1], [53, 3], [54, 4]]);
    expect(pairer.counters).toMatchObject({ paired: 4, droppedColour: 1, droppedDepth: 0 });
  });

  it('restarts the numbering on reset and counts what was waiting', () => {
    const pairer = new FramePairer({ pairBy: 'order', toleranceMs: 20 });
    pairer.pushColour(fake(0, 0));
    pairer.pushColour(fake(1, 1));
    pairer.reset();
    expect(pairer.counters.droppedColour).toBe(2);
    expect(ids(pairer.pushDepth(fake(7, 2, 'GRAY16_LE')))).toEqual([]);
    expect(ids(pairer.pushColour(fake(2, 3)))).toEqual([[2, 7]]);
  });

  it('pairs by time without the mismatch a queue-zip makes when a depth frame is missing', () => {
    const pairer = new FramePairer({ pairBy: 'time', toleranceMs: 20 });
    const colour = [0, 100, 200, 300].map((t, i) => fake(i, t));
    const depth = [2, 203, 301, 400].map((t, i) => fake(i, t, 'GRAY16_LE')); // the one near 100 is lost
    const pairs = [];
    for (let i = 0; i < 4; i++) pairs.push(...pairer.pushColour(colour[i]!), ...pairer.pushDepth(depth[i]!));
    pairs.push(...pairer.poll(1000));
    // Zipping queues would give [1,1] (t 100 with t 203); by time colour 1 has no partner.
    expect(ids(pairs)).toEqual([[0, 0], [2, 1], [3, 2]]);
    expect(pairer.counters).toMatchObject({ paired: 3, droppedColour: 1, ambiguous: 0 });
  });

  it('drops instead of guessing when two frames fall within the tolerance', () => {
    const pairer = new FramePairer({ pairBy: 'time', toleranceMs: 30 });
    const pairs = [
      ...pairer.pushDepth(fake(0, 30, 'GRAY16_LE')),
      ...pairer.pushColour(fake(0, 50)),
      ...pairer.pushDepth(fake(1, 70, 'GRAY16_LE')),
      ...pairer.poll(200),
    ];
    expect(pairs).toEqual([]);
    expect(pairer.counters).toMatchObject({ paired: 0, droppedColour: 1, ambiguous: 1, droppedDepth: 2 });
  });

  it('decides as soon as the tolerance window has passed when given the time', () => {
    const pairer = new FramePairer({ pairBy: 'time', toleranceMs: 20 });
    expect(pairer.pushColour(fake(0, 1000), 1000)).toEqual([]);
    expect(pairer.pushDepth(fake(0, 1003, 'GRAY16_LE'), 1003)).toEqual([]);
    expect(pairer.nextDecisionAt()).toBe(1020);
    expect(pairer.poll(1019)).toEqual([]);
    expect(ids(pairer.poll(1024))).toEqual([[0, 0]]);
    expect(pairer.nextDecisionAt()).toBeUndefined();
  });

  it('stays bounded when one stream never delivers, and drops out-of-order frames', () => {
    const pairer = new FramePairer({ pairBy: 'time', toleranceMs: 5, maxPending: 4 });
    for (let i = 0; i < 200; i++) pairer.pushColour(fake(i, i * 10));
    expect(pairer.pending.colour).toBe(4);
    expect(pairer.counters.droppedColour).toBe(196);
    pairer.pushDepth(fake(0, 5000, 'GRAY16_LE'));
    pairer.pushDepth(fake(1, 4000, 'GRAY16_LE'));
    expect(pairer.counters.droppedDepth).toBe(1);
  });
});

// ---- real pipelines -------------------------------------------------------------------------------

describe('GstFrameSource', () => {
  it('delivers tightly packed RGB frames from videotestsrc (row padding stripped)', async () => {
    const source = frameSource({ kind: 'test', pattern: 'red', fps: 50 });
    const seen = record(source);
    source.start();
    await until('3 frames', () => seen.frames.length >= 3, 5000);
    const [first, second, third] = seen.frames;
    // 10 RGB pixels are 30 bytes; GStreamer pads rows to 32, so the raw buffer had 224 bytes.
    expect(first).toMatchObject({ format: 'RGB', width: 10, height: 7, index: 0 });
    expect(first!.data.length).toBe(210);
    expect(everyPixelIs(first!, [255, 0, 0])).toBe(true);
    expect([second!.index, third!.index]).toEqual([1, 2]);
    expect(second!.capturedAt).toBeGreaterThan(first!.capturedAt);
    expect(Math.abs(first!.capturedAtWall - Date.now())).toBeLessThan(5000);
    expect(seen.states.map((s) => s.state).slice(0, 2)).toEqual(['starting', 'running']);
    expect(source.status).toMatchObject({ state: 'running', reconnects: 0 });
  });

  it('delivers a folder of PNGs in name order with their exact colours, then ends', async () => {
    const source = frameSource({ kind: 'file', path: dirs.colours, loop: false, fps: 40 }, { output: { format: 'RGB', width: 5, height: 3 } });
    const seen = record(source);
    source.start();
    await until('the end of the folder', () => source.status.state === 'ended', 5000);
    expect(seen.frames.map((f) => f.index)).toEqual([0, 1, 2, 3]);
    seen.frames.forEach((frame, i) => {
      expect(frame.data.length).toBe(5 * 3 * 3);
      expect(everyPixelIs(frame, NAME_ORDER_COLOURS[i]!)).toBe(true);
    });
    expect(source.status).toMatchObject({ state: 'ended', cause: 'eos', reconnects: 0, images: 4 });
  });

  it('delivers 16-bit depth PNGs with their exact values', async () => {
    const source = frameSource({ kind: 'file', path: dirs.depth, loop: false, fps: 40 }, { output: { format: 'GRAY16_LE', width: 5, height: 3 } });
    const seen = record(source);
    source.start();
    await until('the end of the depth folder', () => source.status.state === 'ended', 5000);
    expect(seen.frames).toHaveLength(DEPTH_VALUES.length);
    seen.frames.forEach((frame, i) => {
      expect(frame.data.length).toBe(5 * 3 * 2); // 10-byte rows, padded to 12 by GStreamer
      const values = [...depthValues(frame)];
      expect(values[7]).toBe(MARKER);
      expect(values.filter((_, p) => p !== 7).every((v) => v === DEPTH_VALUES[i])).toBe(true);
    });
  });

  it('scales depth by picking values, never blending them', async () => {
    const source = frameSource({ kind: 'file', path: dirs.depthScaled, loop: false, fps: 40 }, { output: { format: 'GRAY16_LE', width: 2, height: 2 } });
    const seen = record(source);
    source.start();
    await until('the depth frame', () => seen.frames.length === 1, 5000);
    expect([...depthValues(seen.frames[0]!)].every((v) => v === 1000 || v === 65535)).toBe(true);
  });

  it('reads JPEG folders and printf patterns starting at 1', async () => {
    const jpeg = frameSource({ kind: 'file', path: dirs.jpeg, loop: false, fps: 40 });
    const pattern = frameSource({ kind: 'file', path: path.join(dirs.pattern, 'shot-%03d.png'), loop: false, fps: 40 });
    const jpegSeen = record(jpeg);
    const patternSeen = record(pattern);
    jpeg.start();
    pattern.start();
    await until('both to end', () => jpeg.status.state === 'ended' && pattern.status.state === 'ended', 5000);
    const [r, g, b] = pixel(jpegSeen.frames[0]!, 0);
    expect(Math.abs(r! - 200) + Math.abs(g! - 40) + Math.abs(b! - 90)).toBeLessThan(12);
    expect(patternSeen.frames.map((f) => pixel(f, 0)[0])).toEqual([50, 100, 150]);
  });

  it('refuses empty and mixed folders, missing devices and missing elements with what to do', () => {
    const start = (source: StreamSource) => () => frameSource(source).start();
    expect(start({ kind: 'file', path: dirs.empty, loop: true, fps: 10 })).toThrow(`the folder ${dirs.empty} holds no PNG or JPEG images`);
    expect(start({ kind: 'file', path: dirs.mixed, loop: true, fps: 10 })).toThrow(`the folder ${dirs.mixed} mixes PNG and JPEG`);
    expect(start({ kind: 'file', path: path.join(dirs.pattern, 'none-%03d.png'), loop: true, fps: 10 })).toThrow(/no image matches/);
    expect(start({ kind: 'v4l2', device: '/dev/video-not-here' })).toThrow(/does not exist/);
    expect(start({ kind: 'pipeline', pipeline: 'videotestsrc ! nosuchelement' })).toThrow(
      /GStreamer element "nosuchelement" is not installed: find the plugin/,
    );
  });

  const aravisInstalled = (() => {
    try {
      execFileSync('gst-inspect-1.0', ['aravissrc'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  })();
  it.skipIf(aravisInstalled)('names the Debian package of a missing preset element (aravissrc)', () => {
    const source = frameSource({ kind: 'aravis' });
    expect(() => source.start()).toThrow(/"aravissrc" is not installed: install libaravis-0\.8-0/);
    expect(source.status.state).toBe('stopped');
  });

  it('reconnects when a camera goes away, and the frame index continues', async () => {
    const source = frameSource({ kind: 'test', pattern: 'snow', fps: 60, numBuffers: 4 });
    const seen = record(source);
    source.start();
    await until('10 frames over several runs', () => seen.frames.length >= 10, 5000);
    expect(seen.frames.slice(0, 10).map((f) => f.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const reconnecting = seen.states.filter((s) => s.state === 'reconnecting');
    expect(reconnecting.length).toBeGreaterThanOrEqual(2);
    // Frames flowed before every end, so the backoff never grew past its start.
    expect(reconnecting.every((s) => s.cause === 'eos' && s.retryInMs === RECONNECT.initialMs)).toBe(true);
  });

  it('reports the GStreamer error text and backs off exponentially', async () => {
    const source = frameSource({ kind: 'pipeline', pipeline: `multifilesrc location=${quoteValue(path.join(root, 'gone', '%d.png'))} ! pngdec` });
    const seen = record(source);
    source.start();
    await until('3 failed attempts', () => seen.states.filter((s) => s.state === 'reconnecting').length >= 3, 5000);
    const reconnecting = seen.states.filter((s) => s.state === 'reconnecting');
    expect(reconnecting[0]!.reason).toMatch(/Error while reading from file.*No such file or directory/);
    expect(reconnecting.map((s) => s.retryInMs)).toEqual([40, 80, 160]);
  });

  it('recovers the error text of a pipeline that fails inside play() (the binding loses that bus message)', async () => {
    // /dev/null exists, so only GStreamer can tell it is no camera: v4l2src fails while leaving NULL.
    const source = frameSource({ kind: 'v4l2', device: '/dev/null' });
    const seen = record(source);
    source.start();
    await until('the failure', () => seen.states.some((s) => s.state === 'reconnecting'), 5000);
    expect(seen.states.find((s) => s.state === 'reconnecting')).toMatchObject({
      cause: 'error',
      reason: expect.stringMatching(/^v4l2src0: .*'\/dev\/null'.*isn't a v4l2 driver/),
    });
  });

  it('restarts a stream that delivers nothing', async () => {
    const source = frameSource({ kind: 'pipeline', pipeline: 'videotestsrc is-live=true ! valve drop=true' }, { startTimeoutMs: 200 });
    const seen = record(source);
    source.start();
    await until('a stall', () => seen.states.some((s) => s.state === 'reconnecting'), 5000);
    expect(seen.states.find((s) => s.state === 'reconnecting')).toMatchObject({ cause: 'stall', reason: 'no frame within 200 ms of starting' });
  });

  it('follows a folder whose images vanish and come back', async () => {
    const source = frameSource({ kind: 'file', path: dirs.vanishing, loop: true, fps: 50 }, { output: { format: 'RGB', width: 4, height: 4 } });
    const seen = record(source);
    source.start();
    await until('frames from the folder', () => seen.frames.length >= 3, 5000);
    const saved = fs.readdirSync(dirs.vanishing).map((name) => [name, fs.readFileSync(path.join(dirs.vanishing, name))] as const);
    for (const [name] of saved) fs.rmSync(path.join(dirs.vanishing, name));
    await until('the empty folder to be noticed', () => seen.states.some((s) => s.state === 'reconnecting' && /holds no PNG or JPEG/.test(s.reason ?? '')), 5000);
    const before = seen.frames.length;
    for (const [name, bytes] of saved) fs.writeFileSync(path.join(dirs.vanishing, name), bytes);
    await until('frames again', () => seen.frames.length >= before + 3 && source.status.state === 'running', 5000);
    expect(seen.frames.map((f) => f.index)).toEqual(seen.frames.map((_, i) => i));
    expect(pixel(seen.frames.at(-1)!, 0)[2]).toBeGreaterThanOrEqual(100);
  });

  it('calls nothing after stop() resolves, even when stopped from inside a frame callback', async () => {
    const source = frameSource({ kind: 'test', pattern: 'ball', fps: 100 });
    let calls = 0;
    let stopped: Promise<void> | undefined;
    source.onFrame(() => {
      calls++;
      stopped ??= source.stop();
    });
    source.onState(() => calls++);
    source.start();
    await until('a frame', () => stopped !== undefined, 5000);
    await stopped;
    expect(source.status.state).toBe('stopped');
    const after = calls;
    await new Promise((resolve) => setTimeout(resolve, 250));
    expect(calls).toBe(after);
    await new GstFrameSource({ source: { kind: 'test', pattern: 'ball', fps: 10 }, output: { format: 'RGB', width: 2, height: 2 }, reconnect: RECONNECT }).stop();
  });
});

// ---- the agent's entry point ----------------------------------------------------------------------

describe('openSource', () => {
  function collect(source: FrameSource): CapturedFrame[] {
    const got: CapturedFrame[] = [];
    source.onFrame((f) => got.push(f));
    return got;
  }
  /** Which image of the pair folders a pair holds, per stream (colour red = 40 i, depth = 1000 + i). */
  const imageOf = (p: CapturedFrame) => [p.colour.data[0]! / 40, depthValues(p.depth!)[0]! - 1000];

  it('delivers colour frames alone when no depth is configured', async () => {
    const source = camera({ kind: 'test', pattern: 'white', fps: 50 });
    const got = collect(source);
    source.start();
    await until('colour frames', () => got.length >= 2, 5000);
    expect(source.mode).toBe('rgb');
    expect(got[0]!.depth).toBeUndefined();
    expect(got[0]!.colour).toMatchObject({ format: 'RGB', width: 6, height: 4 });
  });

  it('pairs real colour and depth file streams by order', async () => {
    const config: Source = SourceSchema.parse({
      kind: 'file', path: dirs.pairColour, loop: false, fps: 40,
      depth: { kind: 'file', path: dirs.pairDepth, loop: false, fps: 40, pairBy: 'order' },
    });
    const source = camera(config);
    const got = collect(source);
    const statuses: SourceStatus[] = [];
    source.onStatus((s) => statuses.push(s));
    source.start();
    await until('both streams to end', () => source.report().streams.every((s) => s.state === 'ended'), 5000);
    expect(got.map(imageOf)).toEqual([0, 1, 2, 3, 4].map((i) => [i, i]));
    expect(source.report().pairing).toMatchObject({ paired: 5, droppedColour: 0, droppedDepth: 0 });
    expect(new Set(statuses.map((s) => s.stream))).toEqual(new Set(['colour', 'depth']));
  });

  it('pairs real colour and depth file streams by arrival time, each pair from the same image', async () => {
    const source = camera({
      kind: 'file', path: dirs.pairColour, loop: true, fps: 10,
      depth: { kind: 'file', path: dirs.pairDepth, loop: true, fps: 10, pairBy: 'time', toleranceMs: 25 },
    });
    const got = collect(source);
    const drops: string[] = [];
    source.onDrop((reason) => drops.push(reason));
    source.start();
    await until('6 pairs', () => got.length >= 6, 5000);
    for (const pair of got) {
      const [colourImage, depthImage] = imageOf(pair);
      expect(colourImage).toBe(depthImage);
      expect(Math.abs(pair.colour.capturedAt - pair.depth!.capturedAt)).toBeLessThanOrEqual(25);
    }
    expect(new Set(got.map((p) => p.colour.index)).size).toBe(got.length);
    expect(drops.length).toBe(source.report().pairing!.droppedColour + source.report().pairing!.droppedDepth);
  });

  it('restarts both streams together when one fails, so pairing by order stays matched', async () => {
    const source = camera({
      kind: 'file', path: dirs.orderColour, loop: true, fps: 40, reconnect: RECONNECT,
      depth: { kind: 'file', path: dirs.orderDepth, loop: true, fps: 40, pairBy: 'order' },
    });
    const got = collect(source);
    const statuses: SourceStatus[] = [];
    source.onStatus((s) => statuses.push(s));
    source.start();
    await until('pairs past the first loop', () => got.length >= 7, 5000);
    // The colour images vanish: only the colour stream fails, the depth stream would run on.
    const saved = fs.readdirSync(dirs.orderColour).map((name) => [name, fs.readFileSync(path.join(dirs.orderColour, name))] as const);
    for (const [name] of saved) fs.rmSync(path.join(dirs.orderColour, name));
    await until('the colour stream to fail', () => statuses.some((s) => s.stream === 'colour' && /holds no PNG/.test(s.reason ?? '')), 5000);
    const before = got.length;
    for (const [name, bytes] of saved) fs.writeFileSync(path.join(dirs.orderColour, name), bytes);
    await until('pairs after the colour stream is back', () => got.length >= before + 7, 5000);
    expect(got.map(imageOf).filter(([colourImage, depthImage]) => colourImage !== depthImage)).toEqual([]);
    expect(statuses.some((s) => s.stream === 'depth' && s.state === 'reconnecting' && s.cause === 'restart')).toBe(true);
  });

  it('refuses looping folders of different lengths when pairing by order', () => {
    const source = camera({
      kind: 'file', path: dirs.pairColour, loop: true, fps: 10,
      depth: { kind: 'file', path: dirs.depth, loop: true, fps: 10, pairBy: 'order' },
    });
    expect(() => source.start()).toThrow(/as many depth images as colour images.*colour 5, depth 4/);
  });
});
