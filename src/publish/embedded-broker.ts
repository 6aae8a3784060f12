/**
 * An in-process MQTT broker (aedes) for when `mqtt.url` is not set: the demo and benches run without a
 * Mosquitto. aedes speaks MQTT 3.1.1 only; MqttConnection falls back to it. In memory: retained messages
 * and sessions are gone when it stops. Listens on loopback unless told otherwise — an open broker on the
 * plant network would let anyone send commands.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { Aedes } from 'aedes';
import type { Logger } from 'pino';

export interface EmbeddedBrokerOptions {
  /** 0 picks a free port (tests). */
  port: number;
  host?: string;
  logger?: Logger;
}

export class EmbeddedBroker {
  private readonly sockets = new Set<Socket>();
  private stopping: Promise<void> | null = null;

  private constructor(
    private readonly aedes: Aedes,
    private readonly server: Server,
    readonly host: string,
    readonly port: number,
    private readonly logger: Logger | undefined,
  ) {}

  static async start({ port, host = '127.0.0.1', logger }: EmbeddedBrokerOptions): Promise<EmbeddedBroker> {
    const aedes = await Aedes.createBroker();
    const server = createServer(aedes.handle);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (e) {
      await new Promise<void>((r) => aedes.close(() => r()));
      const code = (e as NodeJS.ErrnoException).code;
      throw new Error(`embedded MQTT broker cannot listen on ${host}:${port}${code === 'EADDRINUSE' ? ' (port in use: set mqtt.embeddedPort or mqtt.url)' : ''}: ${(e as Error).message}`, { cause: e });
    }
    const actualPort = (server.address() as { port: number }).port;
    const broker = new EmbeddedBroker(aedes, server, host, actualPort, logger);
    server.on('connection', (socket) => {
      broker.sockets.add(socket);
      socket.once('close', () => broker.sockets.delete(socket));
    });
    server.on('error', (err) => logger?.error({ err }, 'embedded MQTT broker listener failed'));
    aedes.on('clientError', (client, err) => logger?.debug({ clientId: client.id, err: err.message }, 'embedded broker: client error'));
    logger?.info({ host, port: actualPort }, 'embedded MQTT broker listening (MQTT 3.1.1, in memory)');
    return broker;
  }

  get url(): string {
    const host = this.host === '0.0.0.0' || this.host === '::' ? '127.0.0.1' : this.host;
    return `mqtt://${host.includes(':') ? `[${host}]` : host}:${this.port}`;
  }

  get connectedClients(): number {
    return this.aedes.connectedClients;
  }

  /** Stops listening and drops every client (their last wills are not delivered anywhere: the broker is gone). */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
      await new Promise<void>((resolve) => this.aedes.close(() => resolve()));
      for (const socket of this.sockets) socket.destroy();
      await closed;
      this.logger?.info({ port: this.port }, 'embedded MQTT broker stopped');
    })();
    return this.stopping;
  }
}
