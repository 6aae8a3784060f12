/**
 * Downloads a bundle .tar over HTTP(S) for ModelStore.stage (node:http/https, no dependencies).
 *
 * Bounded and typed: a size limit checked on Content-Length before any body byte and again while
 * streaming; a timeout until the response headers (connect + server) and an idle timeout while the body
 * flows; an optional expected sha256; every failure a DeliveryError with a reason.
 *
 * Never a half file under the final name: data goes to `<dest>.part` and is renamed to `<dest>` only when
 * complete (length as announced, sha256 as expected), after an fsync. A `.part` is kept after a timeout or
 * a broken connection only when the server named a validator (ETag / Last-Modified) and accepts ranges;
 * the next call for the same URL and destination then resumes with `Range` + `If-Range`, so a changed file
 * on the server restarts cleanly instead of splicing two versions. Everything else deletes the `.part`.
 * The sidecar `<dest>.part.json` records what the `.part` belongs to.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { dirname, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pino, { type Logger } from 'pino';
import { fsyncPath, writeFileAtomically } from '../../storage/atomic-file.js';

export type DeliveryErrorReason =
  /** Announced or received size above maxBytes. */
  | 'too-large'
  /** No response headers within connectTimeoutMs, or no body data for idleTimeoutMs. */
  | 'timeout'
  /** The server answered with a status other than 200/206 (after redirects). */
  | 'http-status'
  | 'sha256-mismatch'
  /** The body ended or broke before the announced length. */
  | 'truncated'
  /** Connection refused, DNS failure, TLS error... before any response. */
  | 'network'
  /** The caller's AbortSignal fired. */
  | 'aborted'
  /** Not an http(s) URL, too many redirects, or a redirect from https to http. */
  | 'bad-url';

export class DeliveryError extends Error {
  readonly reason: DeliveryErrorReason;
  readonly url: string;
  readonly status?: number;
  /** Bytes received when it failed. */
  readonly bytes?: number;
  constructor(reason: DeliveryErrorReason, message: string, url: string, extra: { status?: number; bytes?: number; cause?: unknown } = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = 'DeliveryError';
    this.reason = reason;
    this.url = url;
    if (extra.status !== undefined) this.status = extra.status;
    if (extra.bytes !== undefined) this.bytes = extra.bytes;
  }
}

export interface DownloadOptions {
  maxBytes: number;
  /** Until the response headers arrive (TCP/TLS connect plus the server's first answer). Default 15 s. */
  connectTimeoutMs?: number;
  /** Longest silence while the body is streaming. Default 30 s. */
  idleTimeoutMs?: number;
  /** Lowercase hex; the download is refused (and deleted) when the content differs. */
  expectedSha256?: string;
  /** Resume a kept `.part` with a Range request when possible. Default true. */
  resume?: boolean;
  /** Extra request headers (an Authorization token...). */
  headers?: Record<string, string>;
  /** PEM CA certificate(s) for a private HTTPS server. */
  ca?: string | Buffer;
  /** Default 5. */
  maxRedirects?: number;
  signal?: AbortSignal;
  logger?: Logger;
}

export interface Downloaded {
  file: string;
  bytes: number;
  sha256: string;
  /** Bytes reused from an earlier interrupted attempt (0: downloaded from the start). */
  resumedFrom: number;
}

/** What a `.part` file belongs to; resuming needs all of it to match. */
interface PartInfo {
  url: string;
  expectedSha256: string | null;
  /** The strong ETag, or Last-Modified, of the response the part came from (sent as If-Range). */
  validator: string;
  totalBytes: number | null;
}

interface Attempt {
  res: IncomingMessage;
  /** The URL after redirects. */
  finalUrl: string;
}

export async function downloadBundle(url: string, destFile: string, options: DownloadOptions): Promise<Downloaded> {
  const logger = options.logger ?? pino({ enabled: false });
  const part = `${destFile}.part`;
  const sidecar = `${destFile}.part.json`;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new DeliveryError('bad-url', `not a URL: ${url}`, url);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new DeliveryError('bad-url', `only http and https URLs are supported: ${url}`, url);

  const discard = async () => {
    await rm(part, { force: true });
    await rm(sidecar, { force: true });
  };

  await mkdir(dirname(destFile), { recursive: true });
  let offset = 0;
  let info: PartInfo | null = null;
  if (options.resume !== false) {
    info = await readPartInfo(sidecar);
    const size = (await stat(part).catch(() => null))?.size ?? 0;
    if (info && info.url === url && info.expectedSha256 === (options.expectedSha256 ?? null) && size > 0 && size <= options.maxBytes) offset = size;
    else info = null;
  }
  if (offset === 0) await discard();

  for (let attempt = 0; ; attempt++) {
    const headers: Record<string, string> = { ...options.headers };
    if (offset > 0 && info) {
      headers.range = `bytes=${offset}-`;
      headers['if-range'] = info.validator;
    }
    const { res, finalUrl } = await get(url, headers, options);
    try {
      const status = res.statusCode ?? 0;
      if (status === 416 && offset > 0 && attempt === 0) {
        // Our part is longer than the file now is: it belongs to another version. Start over.
        res.resume();
        await discard();
        offset = 0;
        info = null;
        continue;
      }
      if (status !== 200 && status !== 206) {
        res.resume();
        // A temporary server problem (5xx, 429) says nothing about our part: keep it for the retry.
        if (status < 500 && status !== 429) await discard();
        throw new DeliveryError('http-status', `${finalUrl}: HTTP ${status} ${res.statusMessage ?? ''}`.trim(), url, { status });
      }
      let start = 0;
      let total: number | null = lengthHeader(res.headers['content-length']);
      if (status === 206) {
        const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? ''));
        if (!range || Number(range[1]) !== offset) {
          // A range we did not ask for: do not splice it onto our part.
          res.resume();
          await discard();
          if (attempt > 0) throw new DeliveryError('http-status', `${finalUrl}: unusable partial response (Content-Range ${res.headers['content-range']})`, url, { status });
          offset = 0;
          info = null;
          continue;
        }
        start = offset;
        total = range[3] === '*' ? (total === null ? null : offset + total) : Number(range[3]);
      } else if (offset > 0) {
        // 200 to a Range request: the file changed (If-Range failed) or the server ignores ranges.
        logger.info({ url, had: offset }, 'download: server sent the whole file; starting over');
        await discard();
        offset = 0;
      }
      if (total !== null && total > options.maxBytes) {
        await discard();
        throw new DeliveryError('too-large', `${finalUrl}: ${total} bytes announced, the limit is ${options.maxBytes}`, url, { bytes: 0 });
      }
      const validator = strongEtag(res.headers.etag) ?? (res.headers['last-modified'] as string | undefined) ?? null;
      const resumable = validator !== null && (status === 206 || res.headers['accept-ranges'] === 'bytes');
      if (resumable && options.resume !== false) {
        await writeFileAtomically(sidecar, JSON.stringify({ url, expectedSha256: options.expectedSha256 ?? null, validator, totalBytes: total } satisfies PartInfo));
      } else {
        await rm(sidecar, { force: true });
      }
      const hash = createHash('sha256');
      if (start > 0) await hashInto(hash, part);
      const received = await receive(res, part, start, hash, total, options, url, finalUrl).catch(async (e: unknown) => {
        // Keep the part only where a later call can resume it safely.
        if (!(e instanceof DeliveryError && (e.reason === 'timeout' || e.reason === 'truncated' || e.reason === 'aborted') && resumable && options.resume !== false)) {
          await discard();
        } else {
          logger.info({ url, kept: e.bytes }, 'download: interrupted; the partial file is kept to resume');
        }
        throw e;
      });
      const sha256 = hash.digest('hex');
      if (options.expectedSha256 && sha256 !== options.expectedSha256) {
        await discard();
        throw new DeliveryError('sha256-mismatch', `${finalUrl}: sha256 ${sha256}, expected ${options.expectedSha256}`, url, { bytes: received });
      }
      await fsyncPath(part);
      await rename(part, destFile);
      await fsyncPath(dirname(destFile));
      await rm(sidecar, { force: true });
      logger.info({ url, file: destFile, bytes: received, resumedFrom: start }, 'download complete');
      return { file: destFile, bytes: received, sha256, resumedFrom: start };
    } finally {
      if (!res.destroyed && !res.complete) res.destroy();
    }
  }
}

/**
 * Removes `.part` files (and sidecars) in `dir` older than `maxAgeMs`: downloads given up on, kept for a
 * resume that never came. Returns the paths removed.
 */
export async function removeStalePartials(dir: string, maxAgeMs: number, now = Date.now()): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!name.endsWith('.part') && !name.endsWith('.part.json')) continue;
    const path = join(dir, name);
    const s = await stat(path).catch(() => null);
    if (s && now - s.mtimeMs > maxAgeMs) {
      await rm(path, { force: true });
      removed.push(path);
    }
  }
  return removed;
}

// ----------------------------------------------------------------------------------------------- helpers

function lengthHeader(v: string | undefined): number | null {
  return v !== undefined && /^\d+$/.test(v) ? Number(v) : null;
}

/** Weak ETags (W/"…") are not valid for If-Range. */
function strongEtag(v: string | undefined): string | null {
  return v && !v.startsWith('W/') ? v : null;
}

async function readPartInfo(path: string): Promise<PartInfo | null> {
  try {
    const o = JSON.parse(await readFile(path, 'utf8')) as PartInfo;
    return typeof o.url === 'string' && typeof o.validator === 'string' ? o : null;
  } catch {
    return null;
  }
}

async function hashInto(hash: Hash, path: string): Promise<void> {
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
}

/** One GET, following redirects; resolves at the response headers, within connectTimeoutMs overall. */
function get(url: string, headers: Record<string, string>, options: DownloadOptions): Promise<Attempt> {
  const timeoutMs = options.connectTimeoutMs ?? 15_000;
  const maxRedirects = options.maxRedirects ?? 5;
  return new Promise((resolve, reject) => {
    let current = new URL(url);
    let redirects = 0;
    const fail = (e: DeliveryError) => {
      clearTimeout(timer);
      reject(e);
    };
    let req: ReturnType<typeof httpRequest> | null = null;
    const timer = setTimeout(() => {
      req?.destroy();
      fail(new DeliveryError('timeout', `${current.href}: no response within ${timeoutMs} ms`, url));
    }, timeoutMs);
    const go = () => {
      const request = current.protocol === 'https:' ? httpsRequest : httpRequest;
      // agent: false: one connection per download, closed afterwards (no keep-alive socket left behind).
      req = request(current, { method: 'GET', headers, agent: false, ...(options.ca ? { ca: options.ca } : {}), ...(options.signal ? { signal: options.signal } : {}) });
      req.on('response', (res) => {
        const status = res.statusCode ?? 0;
        const location = res.headers.location;
        if ([301, 302, 303, 307, 308].includes(status) && location) {
          res.resume();
          const next = new URL(location, current);
          if (++redirects > maxRedirects) return fail(new DeliveryError('bad-url', `${url}: more than ${maxRedirects} redirects`, url, { status }));
          if (current.protocol === 'https:' && next.protocol !== 'https:') {
            return fail(new DeliveryError('bad-url', `${url}: refusing a redirect from https to ${next.protocol} (${next.href})`, url, { status }));
          }
          if (next.protocol !== 'http:' && next.protocol !== 'https:') return fail(new DeliveryError('bad-url', `${url}: redirect to ${next.href}`, url, { status }));
          current = next;
          return go();
        }
        clearTimeout(timer);
        resolve({ res, finalUrl: current.href });
      });
      req.on('error', (e: NodeJS.ErrnoException) => {
        if (options.signal?.aborted) return fail(new DeliveryError('aborted', `${url}: download aborted`, url, { cause: e }));
        fail(new DeliveryError('network', `${current.href}: ${e.code ?? ''} ${e.message}`.replace(/: \s+/, ': '), url, { cause: e }));
      });
      req.end();
    };
    go();
  });
}

/** Streams the body into `part` (appending after `start` bytes), counting, hashing and watching silence. */
async function receive(
  res: IncomingMessage,
  part: string,
  start: number,
  hash: Hash,
  total: number | null,
  options: DownloadOptions,
  url: string,
  finalUrl: string,
): Promise<number> {
  const idleMs = options.idleTimeoutMs ?? 30_000;
  let bytes = start;
  let failure: DeliveryError | null = null;
  const stop = (e: DeliveryError) => {
    failure ??= e;
    res.destroy(e);
  };
  const idle = setTimeout(() => stop(new DeliveryError('timeout', `${finalUrl}: no data for ${idleMs} ms (${bytes} bytes received)`, url, { bytes })), idleMs);
  const meter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      idle.refresh();
      bytes += chunk.byteLength;
      if (bytes > options.maxBytes) {
        const e = new DeliveryError('too-large', `${finalUrl}: more than ${options.maxBytes} bytes (the limit); aborted`, url, { bytes });
        failure ??= e;
        return done(e);
      }
      hash.update(chunk);
      done(null, chunk);
    },
  });
  try {
    await pipeline(res, meter, createWriteStream(part, { flags: start > 0 ? 'a' : 'w' }));
  } catch (e) {
    if (failure) throw failure;
    if (options.signal?.aborted) throw new DeliveryError('aborted', `${url}: download aborted`, url, { bytes, cause: e });
    throw new DeliveryError('truncated', `${finalUrl}: connection broken after ${bytes}${total !== null ? ` of ${total}` : ''} bytes (${(e as Error).message})`, url, {
      bytes,
      cause: e,
    });
  } finally {
    clearTimeout(idle);
  }
  if (failure) throw failure;
  if (!res.complete || (total !== null && bytes !== total)) {
    throw new DeliveryError('truncated', `${finalUrl}: body ended after ${bytes}${total !== null ? ` of ${total}` : ''} bytes`, url, { bytes });
  }
  return bytes;
}
