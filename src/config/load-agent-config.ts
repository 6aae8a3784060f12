/**
 * Loads the agent's YAML configuration file: parse, apply environment overrides, validate against
 * `AgentConfigSchema`, resolve relative paths. Any problem refuses the whole file, and every problem found
 * is reported at once (one line each, with the YAML line where there is one), so nothing starts
 * half-configured and nobody fixes a file one error per restart.
 *
 * Relative paths in the file (model.bundle, updates.trustedKeys, stateDir, mqtt.tls.ca/cert/key, a TensorRT provider's
 * cachePath, the `path` of file sources, colour or depth) are resolved against the config file's folder;
 * paths inside a `pipeline` launch string are GStreamer's business and left alone. Validation does not
 * check that files exist: the agent does that when it starts and says which one is missing.
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, parseDocument } from 'yaml';
import type { z } from 'zod';
import { AgentConfigSchema, type AgentConfig } from './agent-schema.js';

/**
 * Environment overrides, for secrets and for what differs between devices sharing one file. A variable
 * that is set and not empty wins over the file; an empty one counts as unset. `path` values are made
 * absolute against the working directory (not the config folder: they come from the command line or
 * systemd's EnvironmentFile). A bad value is reported under the variable's name.
 */
export const ENV_OVERRIDES = [
  { variable: 'AST_EDGE_MQTT_URL',      key: ['mqtt', 'url'],      kind: 'text', purpose: 'broker URL of this site' },
  { variable: 'AST_EDGE_MQTT_USERNAME', key: ['mqtt', 'username'], kind: 'text', purpose: 'broker user' },
  { variable: 'AST_EDGE_MQTT_PASSWORD', key: ['mqtt', 'password'], kind: 'text', purpose: 'broker password (keep it in /etc/ast-edge/env, mode 0600)' },
  { variable: 'AST_EDGE_MODEL_BUNDLE',  key: ['model', 'bundle'],  kind: 'path', purpose: 'model bundle folder or .tar' },
  { variable: 'AST_EDGE_STATE_DIR',     key: ['stateDir'],         kind: 'path', purpose: 'durable state folder' },
  { variable: 'AST_EDGE_HTTP_PORT',     key: ['http', 'port'],     kind: 'port', purpose: 'health and metrics port' },
] as const satisfies readonly { variable: string; key: readonly string[]; kind: 'text' | 'path' | 'port'; purpose: string }[];

export interface ConfigProblem {
  /** Dotted path of the setting (`model.providers[0].name`), `VARIABLE (path)` for an environment override, '' for the file itself. */
  where: string;
  message: string;
  /** 1-based line in the YAML file, when the problem has a place there. */
  line?: number;
  column?: number;
}

export function formatProblem(p: ConfigProblem): string {
  const at = p.line === undefined ? '' : ` (line ${p.line}${p.column === undefined ? '' : `, column ${p.column}`})`;
  return `${p.where ? `${p.where}: ` : ''}${p.message}${at}`;
}

/** The configuration file cannot be used; `problems` lists everything wrong with it, one entry each. */
export class ConfigError extends Error {
  constructor(
    /** Absolute path of the file. */
    readonly file: string,
    readonly problems: readonly ConfigProblem[],
  ) {
    super([`cannot load agent configuration ${file}:`, ...problems.map((p) => `  ${formatProblem(p)}`)].join('\n'));
    this.name = 'ConfigError';
  }
}

export async function loadAgentConfig(file: string, env: NodeJS.ProcessEnv = process.env): Promise<AgentConfig> {
  const path = resolve(file);

  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new ConfigError(path, [{ where: '', message: readFailure(e as NodeJS.ErrnoException) }]);
  }

  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false });
  if (doc.errors.length > 0) {
    throw new ConfigError(path, doc.errors.map((err) => {
      const { line, col } = lines.linePos(err.pos[0]);
      return { where: '', message: `YAML syntax error: ${err.message}`, line, column: col };
    }));
  }
  if (doc.contents === null) throw new ConfigError(path, [{ where: '', message: 'file is empty' }]);

  let raw: unknown;
  try {
    raw = doc.toJS(); // throws on alias bombs (more than 100 alias expansions)
  } catch (e) {
    throw new ConfigError(path, [{ where: '', message: `YAML error: ${(e as Error).message}` }]);
  }
  const problems: ConfigProblem[] = [];
  const fromEnv = applyEnvOverrides(raw, env, problems);

  const allowedKeys = new Map<string, string[]>();
  const parsed = AgentConfigSchema.safeParse(raw, { error: (iss) => issueMessage(iss, allowedKeys) });
  for (const issue of parsed.error?.issues ?? []) {
    const keys = issue.code === 'unrecognized_keys' ? issue.keys : [undefined];
    for (const key of keys) {
      const at = key === undefined ? issue.path : [...issue.path, key];
      const variable = fromEnv.get(dotted(at));
      if (variable) {
        problems.push({ where: `${variable} (${dotted(at)})`, message: issue.message });
        continue;
      }
      const suggestion = key === undefined ? undefined : closest(key, allowedKeys.get(dotted(issue.path)) ?? []);
      problems.push({
        where: at.length > 0 ? dotted(at) : '(top level)',
        message: suggestion ? `${issue.message} (did you mean "${suggestion}"?)` : issue.message,
        line: lineOf(doc.contents, at, lines),
      });
    }
  }
  if (!parsed.success || problems.length > 0) {
    // In file order; settings from the environment (no line) first.
    throw new ConfigError(path, problems.sort((a, b) => (a.line ?? 0) - (b.line ?? 0)));
  }
  return resolvePaths(parsed.data, dirname(path));
}

function readFailure(e: NodeJS.ErrnoException): string {
  switch (e.code) {
    case 'ENOENT':
      return 'file not found';
    case 'EACCES':
      return 'permission denied (the agent’s user must be able to read it)';
    case 'EISDIR':
      return 'is a folder, not a file';
    default:
      return e.message;
  }
}

/**
 * Writes set, non-empty override variables into the parsed file; returns dotted setting path → variable
 * for the settings now coming from the environment. A section that is present but not a mapping is left
 * alone: validation reports it against the file.
 */
function applyEnvOverrides(raw: unknown, env: NodeJS.ProcessEnv, problems: ConfigProblem[]): Map<string, string> {
  const fromEnv = new Map<string, string>();
  for (const { variable, key, kind } of ENV_OVERRIDES) {
    const text = env[variable];
    if (text === undefined || text === '') continue;
    let value: string | number = text;
    if (kind === 'path') value = resolve(text);
    if (kind === 'port') {
      if (!/^\s*\d+\s*$/.test(text)) {
        problems.push({ where: `${variable} (${key.join('.')})`, message: `expected a whole number (a TCP port), got ${JSON.stringify(text)}` });
        continue;
      }
      value = Number(text);
    }
    let section = raw;
    for (const level of key.slice(0, -1)) {
      if (!isPlainObject(section)) break;
      section[level] ??= {};
      section = section[level];
    }
    if (!isPlainObject(section)) continue;
    section[key[key.length - 1]!] = value;
    fromEnv.set(key.join('.'), variable);
  }
  return fromEnv;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `['model', 'providers', 0, 'name']` → `model.providers[0].name`. */
function dotted(path: readonly PropertyKey[]): string {
  return path.reduce<string>((s, p) => (typeof p === 'number' ? `${s}[${p}]` : s ? `${s}.${String(p)}` : String(p)), '');
}

const TYPE_NAMES: Record<string, string> = {
  string: 'text',
  number: 'a number',
  int: 'a whole number',
  boolean: 'true or false',
  object: 'a mapping (key: value lines)',
  array: 'a list',
};

/** z.int() reports a value that is no number at all as "expected number"; it still wants a whole one. */
function isIntSchema(inst: unknown): boolean {
  const format = (inst as { _zod?: { def?: { format?: string } } } | undefined)?._zod?.def?.format;
  return format !== undefined && /int/.test(format);
}

function describeValue(v: unknown): string {
  if (v === null) return 'an empty value';
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return typeof v;
}

function oneOf(values: readonly unknown[]): string {
  const names = values.map((v) => String(v));
  return names.length === 1 ? names[0]! : `one of ${names.join(', ')}`;
}

/**
 * Messages in the words of someone editing a YAML file. Messages written into the schema itself (for
 * patterns) take precedence over these; anything not handled here keeps zod's own message.
 */
function issueMessage(iss: z.core.$ZodRawIssue, allowedKeys: Map<string, string[]>): string | undefined {
  const input = iss.input;
  switch (iss.code) {
    case 'invalid_type':
      if (input === undefined) return 'required';
      return `expected ${TYPE_NAMES[isIntSchema(iss.inst) ? 'int' : iss.expected] ?? iss.expected}, got ${describeValue(input)}`;
    case 'too_small': {
      const min = Number(iss.minimum);
      if (iss.origin === 'string') return min === 1 ? 'must not be empty' : `must be at least ${min} characters`;
      if (iss.origin === 'array') return `must list at least ${min} item${min === 1 ? '' : 's'}`;
      return `must be ${iss.inclusive ? 'at least' : 'greater than'} ${min}, got ${describeValue(input)}`;
    }
    case 'too_big': {
      const max = Number(iss.maximum);
      if (iss.origin === 'string') return `must be at most ${max} characters`;
      if (iss.origin === 'array') return `must list at most ${max} item${max === 1 ? '' : 's'}`;
      return `must be ${iss.inclusive ? 'at most' : 'less than'} ${max}, got ${describeValue(input)}`;
    }
    case 'invalid_value':
      return `must be ${oneOf(iss.values)}, got ${describeValue(input)}`;
    case 'invalid_union': {
      const options = 'options' in iss ? (iss.options as readonly unknown[] | undefined) : undefined;
      if (iss.discriminator !== undefined && options) {
        if (!isPlainObject(input)) return `expected ${TYPE_NAMES.object}, got ${describeValue(input)}`;
        const value = input[iss.discriminator];
        return value === undefined ? `required: ${oneOf(options)}` : `must be ${oneOf(options)}, got ${describeValue(value)}`;
      }
      // A union of literals (e.g. protocolVersion 5 | 4): list the accepted values.
      const values = iss.errors.flat().flatMap((e) => (e.code === 'invalid_value' ? e.values : []));
      if (values.length === iss.errors.length) return `must be ${oneOf(values)}, got ${describeValue(input)}`;
      return undefined;
    }
    case 'invalid_format':
      if (iss.format === 'regex' && 'pattern' in iss) return `must match ${String(iss.pattern)}, got ${describeValue(input)}`;
      return undefined;
    case 'unrecognized_keys': {
      const shape = (iss.inst as { _zod?: { def?: { shape?: Record<string, unknown> } } } | undefined)?._zod?.def?.shape;
      if (shape) allowedKeys.set(dotted(iss.path ?? []), Object.keys(shape));
      return 'unknown key';
    }
    default:
      return undefined;
  }
}

/** The allowed key a misspelt one most likely meant: same letters ignoring case, or at most two edits away. */
function closest(key: string, allowed: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of allowed) {
    const d = candidate.toLowerCase() === key.toLowerCase() ? 0 : editDistance(key, candidate);
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  return bestDistance <= Math.min(2, Math.floor(key.length / 2)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(previous[j]! + 1, row[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = row;
  }
  return previous[b.length]!;
}

/**
 * The YAML line a problem belongs to: the line of the deepest key (or list item) on its path that the file
 * has. A missing setting thus points at its section's key (`model:`); a problem with the whole document
 * at its first line.
 */
function lineOf(root: unknown, path: readonly PropertyKey[], lines: LineCounter): number | undefined {
  const lineAt = (node: unknown) => {
    const range = (node as { range?: [number, number, number] } | null)?.range;
    return range ? lines.linePos(range[0]).line : undefined;
  };
  if (path.length === 0) return lineAt(root);
  let node = root;
  let line: number | undefined;
  for (const segment of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(segment));
      if (!pair) break;
      line = lineAt(pair.key) ?? line;
      node = pair.value;
    } else if (isSeq(node) && typeof segment === 'number' && node.items[segment] !== undefined) {
      node = node.items[segment];
      line = lineAt(node) ?? line;
    } else {
      break;
    }
  }
  return line;
}

function resolvePaths(config: AgentConfig, base: string): AgentConfig {
  const at = (p: string) => resolve(base, p);
  config.model.bundle = at(config.model.bundle);
  config.updates.trustedKeys = config.updates.trustedKeys.map(at);
  if (config.updates.caFile !== undefined) config.updates.caFile = at(config.updates.caFile);
  config.stateDir = at(config.stateDir);
  for (const provider of config.model.providers) {
    if (provider.name === 'tensorrt') provider.cachePath = at(provider.cachePath);
  }
  const tls = config.mqtt.tls;
  if (tls) {
    if (tls.ca !== undefined) tls.ca = at(tls.ca);
    if (tls.cert !== undefined) tls.cert = at(tls.cert);
    if (tls.key !== undefined) tls.key = at(tls.key);
  }
  if (config.source.kind === 'file') config.source.path = at(config.source.path);
  if (config.source.depth?.kind === 'file') config.source.depth.path = at(config.source.depth.path);
  return config;
}
