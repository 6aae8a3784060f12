/**
 * `GET /healthz` (JSON; 200 when inspecting, 503 when not) and `GET /metrics` (Prometheus text format) on
 * a small HTTP server. Health is computed by the agent; this module only serves it.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';

export interface HealthReport {
  status: 'ok' | 'degraded' | 'down';
  /** One line per problem, for people reading it with curl. */
  problems: string[];
  [key: string]: unknown;
}

export class HealthServer {
  private constructor(private readonly server: Server) {}

  static async start(options: { host: string; port: number; health: () => HealthReport; registry: Registry }): Promise<HealthServer> {
    const server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      if (path === '/healthz') {
        const report = options.health();
        res.writeHead(report.status === 'down' ? 503 : 200, { 'content-type': 'application/json' }).end(JSON.stringify(report) + '\n');
        return;
      }
      if (path === '/metrics') {
        options.registry.metrics().then(
          (text) => res.writeHead(200, { 'content-type': options.registry.contentType }).end(text),
          (e: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${e.message}\n`),
        );
        return;
      }
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /healthz or /metrics\n');
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) =>
        reject(new Error(`http.port ${options.port}: cannot listen on ${options.host}:${options.port} (${e.code ?? e.message})`)),
      );
      server.listen(options.port, options.host, () => resolve());
    });
    return new HealthServer(server);
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
