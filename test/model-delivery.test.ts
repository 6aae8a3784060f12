/**
 * Bundle delivery (src/bundle/delivery/): HTTP download against a local node:http server that serves a
 * real bundle .tar, stalls, lies about the length, ignores ranges or answers 404; and MQTT-style chunk
 * assembly (order, duplicates, conflicts, checksums, limits, timeout and restart cleanup). Both end by
 * staging the result in a ModelStore.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packBundle } from '../src/bundle/bundle-store.js';
import { ChunkAssembler, ChunkError, type ChunkOutcome } from '../src/bundle/delivery/chunk-assembler.js';
import { DeliveryError, downloadBundle, removeStalePartials, type DownloadOptions } from '../src/bundle/delivery/download.js';
import { ModelStore } from '../src/bundle/model-store.js';
import type { BundleChunk } from '../src/config/bundle-chunk-schema.js';
import { writeTinyBundle } from './helpers/tiny-bundle.js';
import { makeTestPki } from './support/tls.js';
import { rejectionOf } from './support/rejection.js';

let root: string;
let tarBytes: Buffer;
let tarSha: string;
let server: Server;
let base: string;
let n = 0;
/** Range headers the server saw, per path. */
const ranges = new Map<string, (string | undefined)[]>();
/** Behaviour of /flaky: truncate the body (with a validator), serve it whole, or ignore Range requests. */
let flaky: 'truncate' | 'ok' | 'ignore-range' = 'truncate';

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function serveFile(req: IncomingMessage, res: ServerResponse, opts: { etag?: boolean; honourRange?: boolean; cutAt?: number } = {}) {
  const { etag = true, honourRange = true, cutAt } = opts;
  const headers: Record<string, string | number> = { 'content-type': 'application/x-tar' };
  if (etag) {
    headers.etag = '"v1"';
    headers['accept-ranges'] = 'bytes';
  }
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  const ifRange = req.headers['if-range'];
  if (m && honourRange && etag && (!ifRange || ifRange === '"v1"')) {
    const start = Number(m[1]);
    if (start >= tarBytes.length) {
      res.writeHead(416, { 'content-range': `bytes */${tarBytes.length}` }).end();
      return;
    }
    res.writeHead(206, { ...headers, 'content-length': tarBytes.length - start, 'content-range': `bytes ${start}-${tarBytes.length - 1}/${tarBytes.length}` });
    res.end(tarBytes.subarray(start));
    return;
  }
  res.writeHead(200, { ...headers, 'content-length': tarBytes.length });
  if (cutAt !== undefined) {
    // Announce the whole length, send part of it, then drop the connection.
    res.write(tarBytes.subarray(0, cutAt), () => setTimeout(() => res.socket?.destroy(), 20));
    return;
  }
  res.end(tarBytes);
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ast-delivery-'));
  await writeTinyBundle(join(root, 'bundle'), 'rgb', 'delivered');
  await packBundle(join(root, 'bundle'), join(root, 'bundle.tar'));
  tarBytes = await readFile(join(root, 'bundle.tar'));
  tarSha = sha256(tarBytes);
  server = createServer((req, res) => {
    const path = req.url ?? '';
    ranges.set(path, [...(ranges.get(path) ?? []), req.headers.range]);
    switch (path) {
      case '/bundle.tar':
        return serveFile(req, res);
      case '/redirect':
        return res.writeHead(302, { location: '/bundle.tar' }).end();
      case '/missing':
        return res.writeHead(404).end('no such bundle');
      case '/big':
        // Announces 10 MB and then sends nothing: the client must refuse on the header alone.
        res.writeHead(200, { 'content-length': 10_000_000 });
        return res.flushHeaders();
      case '/endless':
        // No Content-Length (chunked): only counting while streaming can stop it.
        res.writeHead(200);
        const pump = () => {
          if (res.destroyed) return;
          res.write(Buffer.alloc(64 * 1024, 7), () => setImmediate(pump));
        };
        return pump();
      case '/stall-headers':
        return; // never answers
      case '/stall-body':
        res.writeHead(200, { 'content-length': tarBytes.length });
        return res.write(tarBytes.subarray(0, 1000));
      case '/lie':
        return serveFile(req, res, { etag: false, cutAt: 5000 });
      case '/flaky':
        if (flaky === 'truncate') return serveFile(req, res, { cutAt: 100_000 });
        return serveFile(req, res, { honourRange: flaky === 'ok' });
      default:
        res.writeHead(500).end();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await rm(root, { recursive: true, force: true });
});

const fast: DownloadOptions = { maxBytes: 5_000_000, connectTimeoutMs: 1000, idleTimeoutMs: 400 };

function dest(): string {
  return join(root, `dl-${n++}`, 'bundle.tar');
}

const refused = (p: Promise<unknown>): Promise<DeliveryError> => rejectionOf(p, DeliveryError);

function leftovers(file: string): string[] {
  const dir = join(file, '..');
  return existsSync(dir) ? readdirSync(dir) : [];
}

describe('download', () => {
  it('downloads a bundle .tar (checking its sha256), which the model store stages and commits', async () => {
    const file = dest();
    const d = await downloadBundle(`${base}/bundle.tar`, file, { ...fast, expectedSha256: tarSha });
    expect(d).toEqual({ file, bytes: tarBytes.length, sha256: tarSha, resumedFrom: 0 });
    expect(sha256(await readFile(file))).toBe(tarSha);
    expect(leftovers(file)).toEqual(['bundle.tar']);
    const store = await ModelStore.open(join(root, 'store-dl'), { freeSpaceMarginBytes: 0 });
    const v = await store.commit(await store.stage(file));
    expect(v.id).toBe('delivered');
  });

  it('over https: a server certified by the configured CA is trusted, the system CAs alone refuse it; no redirect down to http', async () => {
    const pki = makeTestPki();
    const secure = createHttpsServer({ cert: await readFile(pki.serverCert), key: await readFile(pki.serverKey) }, (req, res) => {
      if (req.url === '/downgrade') return res.writeHead(302, { location: `${base}/bundle.tar` }).end();
      return serveFile(req, res);
    });
    await new Promise<void>((r) => secure.listen(0, '127.0.0.1', r));
    const url = `https://127.0.0.1:${(secure.address() as AddressInfo).port}`;
    try {
      const ca = await readFile(pki.ca);
      const file = dest();
      expect(await downloadBundle(`${url}/bundle.tar`, file, { ...fast, ca, expectedSha256: tarSha })).toMatchObject({ sha256: tarSha, bytes: tarBytes.length });
      const untrusted = await refused(downloadBundle(`${url}/bundle.tar`, dest(), fast));
      expect(untrusted.reason).toBe('network');
      expect(untrusted.message).toMatch(/self[- ]signed certificate|unable to (get|verify)/i);
      const down = await refused(downloadBundle(`${url}/downgrade`, dest(), { ...fast, ca }));
      expect(down).toMatchObject({ reason: 'bad-url', status: 302 });
      expect(down.message).toContain('refusing a redirect from https to http:');
    } finally {
      secure.closeAllConnections();
      await new Promise((r) => secure.close(r));
      await rm(pki.dir, { recursive: true, force: true });
    }
  });

  it('follows redirects', async () => {
    const file = dest();
    expect((await downloadBundle(`${base}/redirect`, file, fast)).sha256).toBe(tarSha);
  });

  it('refuses a wrong sha256 and deletes what it downloaded', async () => {
    const file = dest();
    const e = await refused(downloadBundle(`${base}/bundle.tar`, file, { ...fast, expectedSha256: 'a'.repeat(64) }));
    expect(e.reason).toBe('sha256-mismatch');
    expect(e.message).toContain(`sha256 ${tarSha}, expected ${'a'.repeat(64)}`);
    expect(leftovers(file)).toEqual([]);
  });

  it('refuses on Content-Length before any body byte, and aborts a body that grows past the limit', async () => {
    const t0 = Date.now();
    const big = await refused(downloadBundle(`${base}/big`, dest(), { ...fast, idleTimeoutMs: 5000 }));
    expect(big.reason).toBe('too-large');
    expect(big.message).toContain('10000000 bytes announced, the limit is 5000000');
    expect(Date.now() - t0).toBeLessThan(2000);
    const file = dest();
    const endless = await refused(downloadBundle(`${base}/endless`, file, { ...fast, maxBytes: 1_000_000 }));
    expect(endless.reason).toBe('too-large');
    expect(endless.bytes).toBeGreaterThan(1_000_000);
    expect(endless.bytes).toBeLessThan(1_000_000 + 128 * 1024);
    expect(leftovers(file)).toEqual([]);
  });

  it('times out waiting for the response, and when the body stalls', async () => {
    const t0 = Date.now();
    const headers = await refused(downloadBundle(`${base}/stall-headers`, dest(), { ...fast, connectTimeoutMs: 300 }));
    expect(headers.reason).toBe('timeout');
    expect(headers.message).toContain('no response within 300 ms');
    expect(Date.now() - t0).toBeLessThan(1500);
    const file = dest();
    const body = await refused(downloadBundle(`${base}/stall-body`, file, { ...fast, idleTimeoutMs: 300 }));
    expect(body.reason).toBe('timeout');
    expect(body.message).toMatch(/no data for 300 ms \(1000 bytes received\)/);
    // No validator from that server: nothing to resume, nothing kept.
    expect(leftovers(file)).toEqual([]);
  });

  it('a server that announces more than it sends: truncated, and no file that looks complete', async () => {
    const file = dest();
    const e = await refused(downloadBundle(`${base}/lie`, file, fast));
    expect(e.reason).toBe('truncated');
    expect(e.message).toContain(`of ${tarBytes.length} bytes`);
    expect(existsSync(file)).toBe(false);
    expect(leftovers(file)).toEqual([]);
  });

  it('an interrupted download with a validator is kept as .part and resumed with Range + If-Range', async () => {
    const file = dest();
    flaky = 'truncate';
    const e = await refused(downloadBundle(`${base}/flaky`, file, { ...fast, expectedSha256: tarSha }));
    expect(e.reason).toBe('truncated');
    expect(existsSync(file)).toBe(false);
    expect(leftovers(file).sort()).toEqual(['bundle.tar.part', 'bundle.tar.part.json']);
    flaky = 'ok';
    ranges.set('/flaky', []);
    const d = await downloadBundle(`${base}/flaky`, file, { ...fast, expectedSha256: tarSha });
    expect(d.resumedFrom).toBe(100_000);
    expect(d.sha256).toBe(tarSha);
    expect(ranges.get('/flaky')).toEqual(['bytes=100000-']);
    expect(sha256(await readFile(file))).toBe(tarSha);
    expect(leftovers(file)).toEqual(['bundle.tar']);
  });

  it('a server that ignores Range gets a clean restart, not a spliced file; resume: false never resumes', async () => {
    const file = dest();
    flaky = 'truncate';
    await refused(downloadBundle(`${base}/flaky`, file, fast));
    flaky = 'ignore-range';
    const d = await downloadBundle(`${base}/flaky`, file, fast);
    expect(d).toMatchObject({ resumedFrom: 0, sha256: tarSha });

    const other = dest();
    flaky = 'truncate';
    await refused(downloadBundle(`${base}/flaky`, other, { ...fast, resume: false }));
    expect(leftovers(other)).toEqual([]);
  });

  it('a .part from another URL is not resumed; stale partials can be swept', async () => {
    const file = dest();
    flaky = 'truncate';
    await refused(downloadBundle(`${base}/flaky`, file, fast));
    ranges.set('/bundle.tar', []);
    expect((await downloadBundle(`${base}/bundle.tar`, file, fast)).resumedFrom).toBe(0);
    expect(ranges.get('/bundle.tar')).toEqual([undefined]);
    const dir = join(file, '..');
    await writeFile(join(dir, 'old.tar.part'), 'x');
    expect(await removeStalePartials(dir, 60_000, Date.now() + 120_000)).toEqual([join(dir, 'old.tar.part')]);
  });

  it('404 is an http-status error with the status; bad URLs and refused connections are typed too', async () => {
    const e = await refused(downloadBundle(`${base}/missing`, dest(), fast));
    expect(e).toMatchObject({ reason: 'http-status', status: 404 });
    expect(e.message).toContain('HTTP 404');
    expect((await refused(downloadBundle('ftp://example.com/x.tar', dest(), fast))).reason).toBe('bad-url');
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    expect((await refused(downloadBundle(`http://127.0.0.1:${port}/x.tar`, dest(), fast))).reason).toBe('network');
  });

  it('an AbortSignal stops it with reason aborted', async () => {
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    const e = await refused(downloadBundle(`${base}/stall-body`, dest(), { ...fast, idleTimeoutMs: 5000, signal: ac.signal }));
    expect(e.reason).toBe('aborted');
  });
});

// -------------------------------------------------------------------------------------------- chunks

const CHUNK = 64 * 1024;

function chunksOf(bytes: Buffer, transferId: string, chunkBytes = CHUNK): BundleChunk[] {
  const count = Math.ceil(bytes.length / chunkBytes);
  return Array.from({ length: count }, (_, index) => {
    const data = bytes.subarray(index * chunkBytes, (index + 1) * chunkBytes);
    return { transferId, index, count, chunkBytes, totalBytes: bytes.length, totalSha256: sha256(bytes), sha256: sha256(data), data: data.toString('base64') };
  });
}

async function assembler(extra: Partial<Parameters<typeof ChunkAssembler.open>[0]> = {}) {
  return ChunkAssembler.open({ dir: join(root, `chunks-${n++}`), maxBytes: 5_000_000, freeSpaceMarginBytes: 0, ...extra });
}

const chunkRefusal = (p: Promise<unknown>): Promise<ChunkError> => rejectionOf(p, ChunkError);

describe('chunk assembly', () => {
  it('out of order with identical duplicates: a verified .tar the model store stages', async () => {
    const a = await assembler();
    const chunks = chunksOf(tarBytes, 'tx-1');
    expect(chunks.length).toBeGreaterThan(4);
    const order = [...chunks].reverse();
    order.splice(3, 0, order[0]!, order[1]!); // repeats of chunks already in
    const outcomes: ChunkOutcome[] = [];
    for (const c of order) outcomes.push(await a.accept(JSON.parse(JSON.stringify(c))));
    expect(outcomes.filter((o) => o.status === 'duplicate')).toHaveLength(2);
    const done = outcomes.at(-1)!;
    expect(done).toMatchObject({ status: 'complete', transferId: 'tx-1', bytes: tarBytes.length, sha256: tarSha });
    const file = (done as { file: string }).file;
    expect(sha256(await readFile(file))).toBe(tarSha);
    expect(readdirSync(join(file, '..'))).toEqual(['tx-1.tar']);
    // A late repeat of a finished transfer is a harmless duplicate.
    expect((await a.accept(chunks[1])).status).toBe('duplicate');
    const store = await ModelStore.open(join(root, 'store-chunks'), { freeSpaceMarginBytes: 0 });
    expect((await store.commit(await store.stage(file))).id).toBe('delivered');
    await a.close();
  });

  it('refuses a different chunk under a seen index, a chunk whose sha256 is wrong, and inconsistent metadata', async () => {
    const a = await assembler();
    const chunks = chunksOf(tarBytes, 'tx-2');
    expect((await a.accept(chunks[0])).status).toBe('accepted');
    const forged = chunksOf(Buffer.from(tarBytes).fill(1, 0, 10), 'tx-2')[0]!;
    const conflict = await chunkRefusal(a.accept({ ...forged, totalSha256: chunks[0]!.totalSha256 }));
    expect(conflict).toMatchObject({ reason: 'conflict', transferId: 'tx-2', index: 0 });
    const badSha = await chunkRefusal(a.accept({ ...chunks[1]!, sha256: 'b'.repeat(64) }));
    expect(badSha.reason).toBe('chunk-sha256-mismatch');
    const inconsistent = await chunkRefusal(a.accept({ ...chunks[1]!, totalSha256: 'c'.repeat(64) }));
    expect(inconsistent).toMatchObject({ reason: 'inconsistent', field: 'totalSha256' });
    // The transfer goes on: the genuine chunks still complete it.
    let last: ChunkOutcome | undefined;
    for (const c of chunks.slice(1)) last = await a.accept(c);
    expect(last!.status).toBe('complete');
    await a.close();
  });

  it('refuses malformed messages naming the field', async () => {
    const a = await assembler();
    const [c] = chunksOf(tarBytes, 'tx-3');
    const cases: [Record<string, unknown>, string][] = [
      [{ ...c, data: 'not base64!' }, 'data'],
      [{ ...c, data: Buffer.from('short').toString('base64'), sha256: sha256(Buffer.from('short')) }, 'data'],
      [{ ...c, index: c!.count }, 'index'],
      [{ ...c, count: 2 }, 'count'],
      [{ ...c, transferId: '../etc' }, 'transferId'],
      [{ ...c, extra: true }, '(root)'],
    ];
    for (const [msg, field] of cases) {
      const e = await chunkRefusal(a.accept(msg));
      expect(e.reason, field).toBe('malformed');
      expect(e.field, JSON.stringify(msg).slice(0, 80)).toBe(field);
    }
    expect(readdirSync(join(root, `chunks-${n - 1}`))).toEqual([]);
    await a.close();
  });

  it('refuses a transfer above the size limit, or beyond maxTransfers, at its first chunk', async () => {
    const a = await assembler({ maxBytes: 100_000, maxTransfers: 1 });
    const tooLarge = await chunkRefusal(a.accept(chunksOf(tarBytes, 'big')[0]));
    expect(tooLarge.reason).toBe('too-large');
    expect(tooLarge.message).toContain(`${tarBytes.length} bytes, the limit is 100000`);
    const small = Buffer.alloc(90_000, 3);
    expect((await a.accept(chunksOf(small, 'one')[0])).status).toBe('accepted');
    expect((await chunkRefusal(a.accept(chunksOf(small, 'two')[0]))).reason).toBe('busy');
    await a.close();
  });

  it('a total sha256 mismatch drops the transfer and its temp file', async () => {
    const a = await assembler();
    const chunks = chunksOf(tarBytes, 'tx-4').map((c) => ({ ...c, totalSha256: 'd'.repeat(64) }));
    for (const c of chunks.slice(0, -1)) await a.accept(c);
    const e = await chunkRefusal(a.accept(chunks.at(-1)));
    expect(e.reason).toBe('total-sha256-mismatch');
    expect(e.message).toContain(`has sha256 ${tarSha}`);
    expect(readdirSync(join(root, `chunks-${n - 1}`))).toEqual([]);
    expect((await chunkRefusal(a.accept(chunks[0]))).reason).toBe('ended');
    await a.close();
  });

  it('an abandoned transfer times out: temp file deleted, callback told, late chunks refused', async () => {
    const expired: unknown[] = [];
    const a = await assembler({ idleTimeoutMs: 600, onExpired: (t) => expired.push(t) });
    const dir = join(root, `chunks-${n - 1}`);
    const chunks = chunksOf(tarBytes, 'tx-5');
    await a.accept(chunks[0]);
    await new Promise((r) => setTimeout(r, 350));
    await a.accept(chunks[1]); // activity pushes the deadline back
    await new Promise((r) => setTimeout(r, 350));
    expect(readdirSync(dir)).toEqual(['tx-5.partial']);
    expect(a.inProgress()).toEqual([{ transferId: 'tx-5', received: 2, count: chunks.length }]);
    for (let i = 0; i < 100 && expired.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(readdirSync(dir)).toEqual([]);
    expect(expired).toEqual([{ transferId: 'tx-5', received: 2, count: chunks.length }]);
    const late = await chunkRefusal(a.accept(chunks[2]));
    expect(late.reason).toBe('ended');
    expect(late.message).toContain('already expired');
    await a.close();
  });

  it('after a restart, an incomplete transfer is discarded and its temp file removed at open', async () => {
    const dir = join(root, 'chunks-restart');
    const first = await ChunkAssembler.open({ dir, maxBytes: 5_000_000, freeSpaceMarginBytes: 0 });
    const chunks = chunksOf(tarBytes, 'tx-6');
    await first.accept(chunks[0]);
    await first.accept(chunks[1]);
    expect(readdirSync(dir)).toEqual(['tx-6.partial']);
    // The process "dies" here: no close(). The next run opens the same folder.
    const second = await ChunkAssembler.open({ dir, maxBytes: 5_000_000, freeSpaceMarginBytes: 0 });
    expect(second.removedAtOpen).toEqual([join(dir, 'tx-6.partial')]);
    expect(readdirSync(dir)).toEqual([]);
    expect(second.inProgress()).toEqual([]);
    await second.close();
    await first.close();
  });
});
