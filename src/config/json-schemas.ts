/**
 * JSON Schemas published from the zod schemas, which stay the single truth: editors validate and complete
 * the YAML config with one, SCADA integrators generate or check MQTT payload code with the others.
 * `npx tsx tools/generate-schemas.ts` writes them; a test fails when a committed file is out of date.
 */
import { z, type ZodType } from 'zod';
import { AgentConfigSchema, DepthSourceSchema, SourceSchema } from './agent-schema.js';
import { MQTT_PAYLOAD_SCHEMAS } from './mqtt-payloads.js';
import { ProviderSchema } from './runtime-schema.js';

export interface PublishedSchema {
  /** Where the schema is written, relative to the repository root. */
  file: string;
  schema: ZodType;
  title: string;
  /**
   * `input`: what someone writes and the agent reads (config files, commands): defaulted fields optional,
   * shorthands accepted. `output` (default): what the agent emits, every field as sent.
   */
  io?: 'input' | 'output';
}

export const PUBLISHED_SCHEMAS: PublishedSchema[] = [
  { file: 'deploy/config.schema.json', schema: AgentConfigSchema, title: 'ast-edge agent configuration', io: 'input' },
  // MQTT payloads (src/config/mqtt-payloads.ts); `result` is the inspection record plus its delivery fields.
  ...MQTT_PAYLOAD_SCHEMAS.map(({ name, title, schema, io }) => ({ file: `docs/mqtt/${name}.schema.json`, schema, title, io })),
];

type JsonSchema = z.core.JSONSchema.BaseSchema;

/** The file's text: draft-07 (what editors' YAML plugins and most validators read), 2-space JSON, final newline. */
export function renderJsonSchema(entry: PublishedSchema): string {
  const io = entry.io ?? 'output';
  const definitions: Record<string, JsonSchema> = {};
  const { $schema, ...body } = z.toJSONSchema(entry.schema, {
    target: 'draft-07',
    io,
    override: ({ zodSchema, jsonSchema }) => {
      dropSafeIntegerBounds(jsonSchema);
      if (io === 'input' && zodSchema === ProviderSchema) acceptProviderName(jsonSchema);
      if (io === 'input' && (zodSchema === SourceSchema || zodSchema === DepthSourceSchema)) acceptPipelineWithoutKind(jsonSchema);
      const shared = SHARED_DEFINITIONS.get(zodSchema);
      if (shared) definitions[shared] = moveTo(jsonSchema, { $ref: `#/definitions/${shared}` });
    },
  });
  const all = { ...(body.definitions ?? {}), ...definitions };
  return `${JSON.stringify({ $schema, title: entry.title, ...body, ...(Object.keys(all).length ? { definitions: all } : {}) }, null, 2)}\n`;
}

/**
 * Schemas written once under `definitions` and referenced, where zod would repeat them inline: the depth
 * source appears under every colour source kind, and would otherwise make up two thirds of the file.
 */
const SHARED_DEFINITIONS = new Map<unknown, string>([[DepthSourceSchema, 'depthSource']]);

/** Replaces `s` in place by `replacement`; returns what `s` was. */
function moveTo(s: JsonSchema, replacement: JsonSchema): JsonSchema {
  const moved = { ...s };
  for (const key of Object.keys(s)) delete (s as Record<string, unknown>)[key];
  Object.assign(s, replacement);
  return moved;
}

/** zod's int() is a safe integer; ±2^53 bounds only clutter the schema. */
function dropSafeIntegerBounds(s: JsonSchema): void {
  if (s.type !== 'integer') return;
  if (s.maximum === Number.MAX_SAFE_INTEGER) delete s.maximum;
  if (s.minimum === Number.MIN_SAFE_INTEGER) delete s.minimum;
}

/** A provider may be written as its bare name (`providers: [tensorrt, cpu]`), as ProviderSchema's preprocess allows. */
function acceptProviderName(s: JsonSchema): void {
  const names = (s.oneOf ?? []).flatMap((v) => (v.properties?.name as JsonSchema | undefined)?.const ?? []);
  const objectForm = moveTo(s, {});
  s.anyOf = [{ type: 'string', enum: names }, objectForm];
}

/** `{pipeline: "..."}` without a kind is a pipeline source, as the source schema's preprocess allows. */
function acceptPipelineWithoutKind(s: JsonSchema): void {
  for (const variant of s.oneOf ?? s.anyOf ?? []) {
    if ((variant.properties?.kind as JsonSchema | undefined)?.const === 'pipeline' && Array.isArray(variant.required)) {
      variant.required = variant.required.filter((k) => k !== 'kind');
    }
  }
}
