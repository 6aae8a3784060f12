/** MQTT payload schemas, topics and the heat-map renderer, without a broker. */
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  CommandResponseSchema,
  MQTT_PAYLOAD_SCHEMAS,
  ResultPayloadSchema,
  SetThresholdRequestSchema,
  StatusPayloadSchema,
  withTransaction,
} from '../src/config/mqtt-payloads.js';
import { describeIssues } from '../src/publish/command-server.js';
import { renderHeatmap } from '../src/publish/heatmap.js';
import { stationTopics, topicMatches } from '../src/publish/topics.js';

const RECORD = {
  seq: 3,
  station: 'st1',
  partId: null,
  capturedAt: '2025-01-02T03:04:05.678Z',
  score: 0.4,
  normalizedScore: 0.2,
  threshold: 1,
  verdict: 'pass',
  latencyMs: 10,
  model: { id: 'demo', version: '1.0.0' },
};

describe('MQTT payload schemas', () => {
  it('result is the flat inspection record plus publishedAt and historical, nothing else', () => {
    const ok = { ...RECORD, publishedAt: '2025-01-02T03:04:06.000Z', historical: false };
    expect(ResultPayloadSchema.parse(ok)).toEqual(ok);
    expect(ResultPayloadSchema.safeParse({ ...RECORD, publishedAt: ok.publishedAt }).success).toBe(false);
    expect(ResultPayloadSchema.safeParse({ ...ok, extra: 1 }).success).toBe(false);
  });

  it('status is online (with versions) or offline (will or shutdown)', () => {
    expect(StatusPayloadSchema.safeParse({ state: 'offline', station: 's', reason: 'connection-lost' }).success).toBe(true);
    expect(StatusPayloadSchema.safeParse({ state: 'offline', station: 's', reason: 'bored' }).success).toBe(false);
    expect(StatusPayloadSchema.safeParse({ state: 'online', station: 's' }).success).toBe(false);
  });

  it('command responses: ok with any data, or an error string', () => {
    expect(CommandResponseSchema.safeParse({ ok: true, transaction: 1, threshold: 0.5 }).success).toBe(true);
    expect(CommandResponseSchema.safeParse({ ok: false, error: 'x', extra: 1 }).success).toBe(false);
    expect(CommandResponseSchema.safeParse({ ok: false }).success).toBe(false);
  });

  it('set-threshold takes exactly one of normalized or raw; errors name the field', () => {
    expect(SetThresholdRequestSchema.parse({ normalized: 0.6 })).toEqual({ normalized: 0.6 });
    expect(SetThresholdRequestSchema.parse({ raw: 3.2 })).toEqual({ raw: 3.2 });
    const msg = (v: unknown) => {
      const r = SetThresholdRequestSchema.safeParse(v);
      return r.success ? 'ok' : describeIssues(r.error);
    };
    expect(msg({})).toMatch(/^normalized: give exactly one/);
    expect(msg({ normalized: 0 })).toMatch(/^normalized: /);
    expect(msg({ raw: -1 })).toMatch(/^raw: /);
    expect(msg({ normalised: 0.5 })).toMatch(/normalised/);
    expect(withTransaction(SetThresholdRequestSchema).safeParse({ normalized: 0.5, transaction: 'a' }).success).toBe(true);
  });

  it('every payload has a JSON Schema (draft-07)', () => {
    for (const { name, schema, io } of MQTT_PAYLOAD_SCHEMAS) {
      const json = z.toJSONSchema(schema, { target: 'draft-07', io }) as { oneOf?: unknown; type?: string };
      expect(json.type === 'object' || Array.isArray(json.oneOf), name).toBe(true);
    }
  });
});

describe('topics', () => {
  it('puts everything under <prefix>/<station>', () => {
    const t = stationTopics('plant/line2/', 'cell-3');
    expect([t.status, t.result, t.reject, t.rejectMissed, t.heatmap, t.metrics]).toEqual([
      'plant/line2/cell-3/status',
      'plant/line2/cell-3/result',
      'plant/line2/cell-3/reject',
      'plant/line2/cell-3/reject/missed',
      'plant/line2/cell-3/heatmap',
      'plant/line2/cell-3/metrics',
    ]);
    expect(t.commandFilter).toBe('plant/line2/cell-3/cmd/+');
    expect(t.commandResponse('status')).toBe('plant/line2/cell-3/cmd/status/response');
    expect(t.commandName('plant/line2/cell-3/cmd/set-threshold')).toBe('set-threshold');
    expect(t.commandName('plant/line2/cell-3/cmd/status/response')).toBeNull();
    expect(t.commandName('plant/line2/cell-3/result')).toBeNull();
  });

  it('matches MQTT filters', () => {
    expect(topicMatches('a/+/c', 'a/b/c')).toBe(true);
    expect(topicMatches('a/+/c', 'a/b/c/d')).toBe(false);
    expect(topicMatches('a/#', 'a')).toBe(true);
    expect(topicMatches('a/#', 'a/b/c')).toBe(true);
    expect(topicMatches('#', '$SYS/x')).toBe(false);
    expect(topicMatches('a/b', 'a/b')).toBe(true);
    expect(topicMatches('a/b', 'a/bc')).toBe(false);
  });
});

describe('heat map', () => {
  it('colours on a fixed scale: zero is dark blue, the threshold (mid-scale) yellow, twice it red', () => {
    const colourOf = (value: number) => {
      const img = renderHeatmap({ data: new Float32Array([value, value]), width: 2, height: 1 }, 2);
      expect([img.width, img.height]).toEqual([16, 8]);
      return [...img.data.subarray(0, 3)];
    };
    expect(colourOf(0)).toEqual([0, 0, 128]);
    expect(colourOf(1)).toEqual([255, 255, 0]);
    expect(colourOf(2)).toEqual([255, 0, 0]);
    expect(colourOf(50)).toEqual([255, 0, 0]);
    expect(colourOf(Number.NaN)).toEqual([255, 0, 0]);
  });

  it('blends over the frame, keeping it visible where the map is calm', () => {
    const frame = { data: new Uint8Array(4 * 4 * 3).fill(200), width: 4, height: 4 };
    const img = renderHeatmap({ data: new Float32Array(4), width: 2, height: 2 }, 1, frame);
    // 80 % frame, 20 % dark blue.
    expect([...img.data.subarray(0, 3)]).toEqual([160, 160, 186]);
  });
});
