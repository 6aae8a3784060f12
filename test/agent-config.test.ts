/**
 * The agent's config file: exact refusal messages (an operator reads them in the journal), environment
 * overrides, relative paths, the shipped examples, and the published JSON Schemas being up to date.
 */
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadAgentConfig } from '../src/config/load-agent-config.js';
import { PUBLISHED_SCHEMAS, renderJsonSchema } from '../src/config/json-schemas.js';

const ROOT = resolve(import.meta.dirname, '..');
let dir: string;
let file: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ast-config-'));
  file = join(dir, 'config.yaml');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const MINIMAL = `station: line1-cell3
source:
  kind: test
model:
  bundle: /models/current.tar
`;

async function load(yaml: string, env: NodeJS.ProcessEnv = {}) {
  await writeFile(file, yaml);
  return loadAgentConfig(file, env);
}

/** The refusal's message, with the temp folder written as DIR. */
async function refusal(yaml: string | null, env: NodeJS.ProcessEnv = {}): Promise<string> {
  if (yaml === null) await rm(file, { force: true });
  else await writeFile(file, yaml);
  const error = await loadAgentConfig(file, env).then(
    () => {
      throw new Error('the configuration was accepted');
    },
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ConfigError);
  expect((error as ConfigError).file).toBe(file);
  return (error as Error).message.replaceAll(dir, 'DIR');
}

describe('loadAgentConfig refuses a bad file with one exact line per problem', () => {
  it('an unknown key, with a suggestion when it looks like a misspelt one', async () => {
    expect(await refusal(`${MINIMAL}colour: red\n`)).toBe(
      'cannot load agent configuration DIR/config.yaml:\n  colour: unknown key (line 6)',
    );
    expect(await refusal(`${MINIMAL}inspection:\n  deadlinems: 500\n`)).toBe(
      'cannot load agent configuration DIR/config.yaml:\n  inspection.deadlinems: unknown key (did you mean "deadlineMs"?) (line 7)',
    );
  });

  it('a station id that cannot be an MQTT topic level', async () => {
    expect(await refusal(MINIMAL.replace('line1-cell3', 'line 1/cell+3'))).toBe(
      'cannot load agent configuration DIR/config.yaml:\n' +
        '  station: must be letters, digits, ".", "_" or "-" (it is an MQTT topic level) (line 1)',
    );
  });

  it('a value outside an enum', async () => {
    expect(await refusal(`${MINIMAL}log:\n  level: verbose\n`)).toBe(
      'cannot load agent configuration DIR/config.yaml:\n' +
        '  log.level: must be one of fatal, error, warn, info, debug, trace, got "verbose" (line 7)',
    );
    expect(await refusal(MINIMAL.replace('kind: test', 'kind: usb'))).toBe(
      'cannot load agent configuration DIR/config.yaml:\n' +
        '  source.kind: must be one of test, file, v4l2, rtsp, aravis, pipeline, got "usb" (line 3)',
    );
  });

  it('a value of the wrong type', async () => {
    expect(await refusal(`${MINIMAL}http:\n  port: fast\n`)).toBe(
      'cannot load agent configuration DIR/config.yaml:\n  http.port: expected a whole number, got "fast" (line 7)',
    );
    expect(await refusal(`${MINIMAL}mqtt: mqtt://broker\n`)).toBe(
      'cannot load agent configuration DIR/config.yaml:\n' +
        '  mqtt: expected a mapping (key: value lines), got "mqtt://broker" (line 6)',
    );
  });

  it('a YAML syntax error, with line and column', async () => {
    expect(await refusal('station: a\nsource: {kind: test\nmodel:\n  bundle: b\n')).toBe(
      'cannot load agent configuration DIR/config.yaml:\n' +
        '  YAML syntax error: Flow map in block collection must be sufficiently indented and end with a } (line 3, column 1)',
    );
    expect(await refusal(`${MINIMAL}station: again\n`)).toBe(
      'cannot load agent configuration DIR/config.yaml:\n  YAML syntax error: Map keys must be unique (line 6, column 1)',
    );
  });

  it('a missing file', async () => {
    expect(await refusal(null)).toBe('cannot load agent configuration DIR/config.yaml:\n  file not found');
  });

  it('an empty file, or one with only comments', async () => {
    expect(await refusal('')).toBe('cannot load agent configuration DIR/config.yaml:\n  file is empty');
    expect(await refusal('# station: a\n\n')).toBe('cannot load agent configuration DIR/config.yaml:\n  file is empty');
  });

  it('a file that is not a mapping', async () => {
    expect(await refusal('- station: a\n')).toBe(
      'cannot load agent configuration DIR/config.yaml:\n  (top level): expected a mapping (key: value lines), got a list (line 1)',
    );
  });

  it('every problem at once, in file order; a missing setting points at its section', async () => {
    const yaml = `station: cell 3
source:
  kind: rtsp
  url: http://camera/stream
  latencyMs: -5
model:
  providers: [tpu, cpu]
  threshold: 1.5
mqtt:
  protocolVersion: 3
  tls:
inspection:
  maxBatch: 100
  trigger: {mode: continuous, every: 0}
`;
    expect(await refusal(yaml)).toBe(
      [
        'cannot load agent configuration DIR/config.yaml:',
        '  station: must be letters, digits, ".", "_" or "-" (it is an MQTT topic level) (line 1)',
        '  source.url: must start with rtsp:// or rtsps:// (line 4)',
        '  source.latencyMs: must be at least 0, got -5 (line 5)',
        '  model.bundle: required (line 6)',
        '  model.providers[0].name: must be one of tensorrt, cuda, cpu, got "tpu" (line 7)',
        '  model.threshold: must be less than 1, got 1.5 (line 8)',
        '  mqtt.protocolVersion: must be one of 5, 4, got 3 (line 10)',
        '  mqtt.tls: expected a mapping (key: value lines), got an empty value (line 11)',
        '  inspection.maxBatch: must be at most 64, got 100 (line 13)',
        '  inspection.trigger.every: must be at least 1, got 0 (line 14)',
      ].join('\n'),
    );
  });

  it('problems carry their path, message and line for programs', async () => {
    await writeFile(file, `${MINIMAL}http:\n  port: 70000\n`);
    const error = (await loadAgentConfig(file, {}).catch((e: unknown) => e)) as ConfigError;
    expect(error.name).toBe('ConfigError');
    expect(error.problems).toEqual([{ where: 'http.port', message: 'must be at most 65535, got 70000', line: 7 }]);
  });
});

describe('environment overrides', () => {
  const ENV = {
    AST_EDGE_MQTT_URL: 'mqtts://broker.site:8883',
    AST_EDGE_MQTT_USERNAME: 'cell3',
    AST_EDGE_MQTT_PASSWORD: 's3cret: with # and spaces',
    AST_EDGE_MODEL_BUNDLE: '/srv/models/b.tar',
    AST_EDGE_STATE_DIR: '/srv/state',
    AST_EDGE_HTTP_PORT: '9200',
  };

  it('override the file, and fill sections the file does not have', async () => {
    const config = await load(`${MINIMAL}mqtt:\n  url: mqtt://from-file\n  username: file-user\n`, ENV);
    expect(config.mqtt).toMatchObject({ url: 'mqtts://broker.site:8883', username: 'cell3', password: 's3cret: with # and spaces' });
    expect(config.model.bundle).toBe('/srv/models/b.tar');
    expect(config.stateDir).toBe('/srv/state');
    expect(config.http).toEqual({ port: 9200, host: '0.0.0.0' });
  });

  it('count as unset when empty, and resolve relative paths against the working directory', async () => {
    const config = await load(MINIMAL, { AST_EDGE_MQTT_PASSWORD: '', AST_EDGE_MODEL_BUNDLE: 'models/b.tar' });
    expect(config.mqtt.password).toBeUndefined();
    expect(config.model.bundle).toBe(resolve('models/b.tar'));
  });

  it('a bad value is reported under the variable, together with the file’s problems', async () => {
    expect(await refusal(MINIMAL.replace('line1-cell3', 'a b'), { AST_EDGE_HTTP_PORT: '80a' })).toBe(
      [
        'cannot load agent configuration DIR/config.yaml:',
        '  AST_EDGE_HTTP_PORT (http.port): expected a whole number (a TCP port), got "80a"',
        '  station: must be letters, digits, ".", "_" or "-" (it is an MQTT topic level) (line 1)',
      ].join('\n'),
    );
    expect(await refusal(MINIMAL, { AST_EDGE_HTTP_PORT: '70000', AST_EDGE_MQTT_URL: 'tcp://broker' })).toBe(
      [
        'cannot load agent configuration DIR/config.yaml:',
        '  AST_EDGE_MQTT_URL (mqtt.url): must start with mqtt://, mqtts://, ws:// or wss://',
        '  AST_EDGE_HTTP_PORT (http.port): must be at most 65535, got 70000',
      ].join('\n'),
    );
  });
});

describe('paths', () => {
  it('relative paths in the file are resolved against its folder; launch strings are left alone', async () => {
    const config = await load(`station: s
source:
  kind: file
  path: images/part-%05d.png
  depth:
    kind: file
    path: ../depth/part-%05d.png
    pairBy: order
model:
  bundle: models/current
  providers:
    - name: tensorrt
      cachePath: trt
    - cpu
mqtt:
  url: mqtts://broker
  tls: { ca: tls/ca.pem, cert: /etc/ssl/agent.crt, key: tls/agent.key }
stateDir: state
`);
    expect(config.source).toMatchObject({ kind: 'file', path: join(dir, 'images/part-%05d.png') });
    expect(config.source.depth).toMatchObject({ kind: 'file', path: resolve(dir, '../depth/part-%05d.png') });
    expect(config.model.bundle).toBe(join(dir, 'models/current'));
    expect(config.model.providers[0]).toMatchObject({ name: 'tensorrt', cachePath: join(dir, 'trt') });
    expect(config.mqtt.tls).toEqual({ ca: join(dir, 'tls/ca.pem'), cert: '/etc/ssl/agent.crt', key: join(dir, 'tls/agent.key'), rejectUnauthorized: true });
    expect(config.stateDir).toBe(join(dir, 'state'));

    const pipeline = await load(MINIMAL.replace('kind: test', 'pipeline: multifilesrc location=img/%05d.png ! pngdec'));
    expect(pipeline.source).toMatchObject({ kind: 'pipeline', pipeline: 'multifilesrc location=img/%05d.png ! pngdec' });
  });

  it('defaults apply and absolute defaults stay as they are', async () => {
    const config = await load(MINIMAL);
    expect(config.stateDir).toBe('/var/lib/ast-edge');
    expect(config.model.providers).toEqual([{ name: 'cpu', arena: true }]);
    expect(config.inspection.trigger).toEqual({ mode: 'continuous', every: 1 });
    expect(config.mqtt.url).toBeUndefined();
  });
});

describe('deploy/examples', async () => {
  const examples = (await readdir(join(ROOT, 'deploy/examples'))).filter((f) => f.endsWith('.yaml')).sort();

  it('has the documented examples', () => {
    expect(examples).toEqual(['aravis.yaml', 'external-trigger.yaml', 'file.yaml', 'rgbd.yaml', 'rtsp.yaml', 'test.yaml', 'v4l2.yaml']);
  });

  // Validation reads only the file: the model bundle need not exist (the agent checks it when it starts),
  // so the examples validate on any machine as shipped.
  it.each(examples)('%s validates', async (name) => {
    const config = await loadAgentConfig(join(ROOT, 'deploy/examples', name), {});
    expect(config.model.bundle).toBe('/var/lib/ast-edge/models/current');
  });
});

describe('published JSON Schemas', () => {
  it.each(PUBLISHED_SCHEMAS.map((e) => [e.file, e] as const))('%s is up to date (npx tsx tools/generate-schemas.ts)', async (path, entry) => {
    const committed = await readFile(join(ROOT, path), 'utf8').catch(() => '(missing)');
    expect(committed, `${path} is stale: run npx tsx tools/generate-schemas.ts`).toBe(renderJsonSchema(entry));
  });

  it('the config schema describes the file as written: defaults optional, provider names accepted', () => {
    const schema = JSON.parse(renderJsonSchema(PUBLISHED_SCHEMAS.find((e) => e.file === 'deploy/config.schema.json')!));
    expect(schema.required).toEqual(['station', 'source', 'model']);
    expect(schema.additionalProperties).toBe(false);
    expect(schema.properties.model.properties.providers.items.anyOf[0]).toEqual({ type: 'string', enum: ['tensorrt', 'cuda', 'cpu'] });
    const pipeline = schema.properties.source.oneOf.find((v: { properties: { kind: { const: string } } }) => v.properties.kind.const === 'pipeline');
    expect(pipeline.required).toEqual(['pipeline']);
  });
});
