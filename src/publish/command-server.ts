/**
 * Request/response commands over MQTT (zigbee2mqtt's bridge-request shape): a JSON object on
 * `<prefix>/<station>/cmd/<name>` is answered on `<prefix>/<station>/cmd/<name>/response` with
 * `{ok: true, transaction?, ...result}` or `{ok: false, transaction?, error}`. The request's `transaction`
 * is echoed; an MQTT 5 request's response topic and correlation data are honoured.
 *
 * Every request is checked before anything runs — size (per command), JSON, the `transaction`, the
 * command's own zod schema — and a request failing any of them, or naming an unknown command, gets an error
 * response naming the reason and changes nothing. A handler that throws becomes an error response. Requests
 * for one command run one at a time, in arrival order; different commands run side by side. The retained
 * copy of a request that the broker replays on (re)subscribe is never executed (it would run again on every
 * reconnect); a retained request is run only as it arrives live, like any other.
 */
import type { IPublishPacket } from 'mqtt';
import type { Logger } from 'pino';
import { z } from 'zod';
import { CommandRequestEnvelopeSchema, StatusRequestSchema, type CommandResponse } from '../config/mqtt-payloads.js';
import type { MqttConnection } from './mqtt-connection.js';

const COMMAND_NAME = /^[a-z0-9][a-z0-9-]{0,63}$/;
export const DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024;

export interface CommandContext {
  name: string;
  transaction?: string | number;
}

export type CommandResult = Record<string, unknown> | void;

export interface CommandDefinition<S extends z.ZodType> {
  /** The arguments (the request without `transaction`); use strict objects so unknown keys are refused. */
  schema: S;
  handler: (args: z.output<S>, context: CommandContext) => CommandResult | Promise<CommandResult>;
  /** Largest request accepted, bytes (default: the server's limit, 64 KiB); model-update chunks want more. */
  maxPayloadBytes?: number;
  /** A handler running longer is answered with an error (it is not cancelled); default 30 s. */
  timeoutMs?: number;
}

export interface CommandServerOptions {
  connection: MqttConnection;
  logger: Logger;
  /** Default request size limit, bytes. */
  maxPayloadBytes?: number;
  /** Added to the built-in `status` answer (publisher figures, health, queue...). */
  status?: () => Record<string, unknown>;
}

type AnyDefinition = CommandDefinition<z.ZodType>;

interface Request {
  name: string;
  responseTopic: string;
  correlationData?: Buffer;
  transaction?: string | number;
}

/** `path: message` for the first few issues, so the reason names the field. */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 5)
    .map((i) => `${i.path.length > 0 ? i.path.join('.') : '(request)'}: ${i.message}`)
    .join('; ');
}

export class CommandServer {
  private readonly commands = new Map<string, AnyDefinition>();
  private readonly queues = new Map<string, Promise<void>>();
  private readonly startedAt = Date.now();
  private unsubscribe: (() => void) | null = null;
  private readonly connection: MqttConnection;
  private readonly logger: Logger;
  private readonly maxPayloadBytes: number;

  constructor(private readonly options: CommandServerOptions) {
    this.connection = options.connection;
    this.logger = options.logger;
    this.maxPayloadBytes = options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES;
    this.register('status', {
      schema: StatusRequestSchema,
      handler: () => ({
        ...(this.connection.status ?? {}),
        uptimeS: Math.round((Date.now() - this.startedAt) / 1000),
        commands: [...this.commands.keys()].sort(),
        ...(this.options.status?.() ?? {}),
      }),
    });
  }

  register<S extends z.ZodType>(name: string, definition: CommandDefinition<S>): void {
    if (!COMMAND_NAME.test(name)) throw new Error(`command name ${JSON.stringify(name)}: lowercase letters, digits and "-" only`);
    if (this.commands.has(name)) throw new Error(`command ${name} is already registered`);
    this.commands.set(name, definition as unknown as AnyDefinition);
  }

  /** Subscribes to `<prefix>/<station>/cmd/+` (kept across reconnects). */
  start(): void {
    if (this.unsubscribe) return;
    this.unsubscribe = this.connection.subscribe(
      this.connection.topics.commandFilter,
      (topic, payload, packet) => this.onRequest(topic, payload, packet),
      { qos: 1, noRetained: true },
    );
  }

  /** Stops taking requests; handlers already running finish and answer if still connected. */
  async stop(): Promise<void> {
    this.unsubscribe?.();
    this.unsubscribe = null;
    await Promise.allSettled([...this.queues.values()]);
  }

  private onRequest(topic: string, payload: Buffer, packet: IPublishPacket): void {
    const topics = this.connection.topics;
    const name = topics.commandName(topic);
    if (name === null) return;
    if (packet.retain) {
      this.logger.warn({ command: name }, 'retained command request ignored (clear it with an empty retained message)');
      return;
    }
    const request: Request = { name, responseTopic: topics.commandResponse(name) };
    const props = packet.properties;
    if (props?.correlationData) request.correlationData = props.correlationData;
    if (props?.responseTopic) {
      if (this.acceptableResponseTopic(props.responseTopic)) request.responseTopic = props.responseTopic;
      else this.logger.warn({ command: name, responseTopic: props.responseTopic }, 'response topic refused (it is one of the station\'s own topics); answering on the default one');
    }

    // Size first (a request too large is not even parsed), then JSON and `transaction`, so that every later
    // answer, including "unknown command", echoes the transaction.
    const definition = this.commands.get(name);
    const limit = definition?.maxPayloadBytes ?? this.maxPayloadBytes;
    if (payload.length > limit) {
      this.respond(request, { ok: false, error: `payload too large: ${payload.length} bytes (limit ${limit})` });
      return;
    }
    let body: unknown;
    const text = payload.toString('utf8').trim();
    if (text === '') {
      // Not taken as `{}`: an empty message is also how a retained one is cleared, and that must not run anything.
      this.respond(request, { ok: false, error: 'empty request (send {} for a command without arguments)' });
      return;
    }
    try {
      body = JSON.parse(text);
    } catch (e) {
      this.respond(request, { ok: false, error: `malformed JSON: ${(e as Error).message}` });
      return;
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      this.respond(request, { ok: false, error: 'the request must be a JSON object' });
      return;
    }
    const envelope = CommandRequestEnvelopeSchema.safeParse(body);
    if (!envelope.success) {
      this.respond(request, { ok: false, error: `invalid request: ${describeIssues(envelope.error)}` });
      return;
    }
    const { transaction, ...args } = envelope.data;
    if (transaction !== undefined) request.transaction = transaction;
    if (!definition) {
      this.respond(request, { ok: false, error: `unknown command "${name}" (known: ${[...this.commands.keys()].sort().join(', ')})` });
      return;
    }
    const parsed = definition.schema.safeParse(args);
    if (!parsed.success) {
      this.respond(request, { ok: false, error: `invalid request: ${describeIssues(parsed.error)}` });
      return;
    }
    const previous = this.queues.get(name) ?? Promise.resolve();
    const run = previous.then(() => this.execute(definition, parsed.data, request));
    this.queues.set(name, run);
    void run.finally(() => {
      if (this.queues.get(name) === run) this.queues.delete(name);
    });
  }

  private async execute(definition: AnyDefinition, args: unknown, request: Request): Promise<void> {
    const timeoutMs = definition.timeoutMs ?? 30_000;
    let timer: NodeJS.Timeout | undefined;
    try {
      const context: CommandContext = { name: request.name, ...(request.transaction !== undefined ? { transaction: request.transaction } : {}) };
      const result = await Promise.race([
        Promise.resolve().then(() => definition.handler(args, context)),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
      const data = result && typeof result === 'object' && !Array.isArray(result) ? result : result === undefined ? {} : { result };
      this.logger.info({ command: request.name, transaction: request.transaction }, 'command done');
      this.respond(request, { ...data, ok: true });
    } catch (e) {
      const error = e instanceof Error ? e.message : String(e);
      this.logger.warn({ command: request.name, transaction: request.transaction, error }, 'command failed');
      this.respond(request, { ok: false, error: error || 'command failed' });
    } finally {
      clearTimeout(timer);
    }
  }

  /** A requester may pick where the answer goes, but not onto the station's own data or command topics. */
  private acceptableResponseTopic(topic: string): boolean {
    if (topic.length === 0 || topic.includes('+') || topic.includes('#')) return false;
    const base = this.connection.topics.base;
    const own = topic === base || topic.startsWith(`${base}/`);
    return !own || (topic.startsWith(`${base}/cmd/`) && topic.endsWith('/response'));
  }

  private respond(request: Request, response: CommandResponse): void {
    const body: CommandResponse = request.transaction === undefined ? response : { ...response, transaction: request.transaction };
    if (!response.ok) this.logger.debug({ command: request.name, error: (response as { error: string }).error }, 'command refused');
    const properties = {
      contentType: 'application/json',
      ...(request.correlationData ? { correlationData: request.correlationData } : {}),
    };
    this.connection.publish(request.responseTopic, JSON.stringify(body), { qos: 1, retain: false, properties }).catch((err: unknown) =>
      this.logger.warn({ err, command: request.name }, 'command response not delivered'),
    );
  }
}
