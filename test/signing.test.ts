/**
 * Signed bundles (src/bundle/signing.ts) on real tiny bundles: key generation, sign/verify round trips on
 * folders and .tar archives, every refusal with its reason, key rotation, and the CLI command functions.
 */
import { createHash, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { appendFile, cp, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tar from 'tar';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BundleError, packBundle, readBundle, writeBundle } from '../src/bundle/bundle-store.js';
import {
  generateKeyPair,
  keyIdOf,
  loadTrustedKeys,
  signBundle,
  SignatureError,
  verifyBundleSignature,
  verifySignedBundle,
  type GeneratedKeyPair,
} from '../src/bundle/signing.js';
import { keygenCommand, signCommand, verifyCommand, type CommandOutput } from '../src/cli/signing-commands.js';
import { writeTinyBundle } from './helpers/tiny-bundle.js';
import { rejectionOf } from './support/rejection.js';

let root: string;
let good: string;
let keyA: GeneratedKeyPair;
let keyB: GeneratedKeyPair;
let n = 0;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ast-signing-'));
  good = join(root, 'good');
  await writeTinyBundle(good);
  keyA = await generateKeyPair(join(root, 'keys'), 'a');
  keyB = await generateKeyPair(join(root, 'keys'), 'b');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function copyOfGood(): Promise<string> {
  const dir = join(root, `copy-${n++}`);
  await cp(good, dir, { recursive: true });
  return dir;
}

async function signedCopy(key = keyA): Promise<string> {
  const dir = await copyOfGood();
  await signBundle(dir, key.privateKeyFile);
  return dir;
}

const refusal = (p: Promise<unknown>): Promise<SignatureError> => rejectionOf(p, SignatureError);

async function editSignature(dir: string, edit: (s: Record<string, unknown>) => void): Promise<void> {
  const path = join(dir, 'signature.json');
  const s = JSON.parse(await readFile(path, 'utf8'));
  edit(s);
  await writeFile(path, JSON.stringify(s));
}

function capture(): CommandOutput & { outLines: string[]; errLines: string[] } {
  const outLines: string[] = [];
  const errLines: string[] = [];
  return { outLines, errLines, out: (l) => void outLines.push(l), err: (l) => void errLines.push(l) };
}

describe('keys', () => {
  it('writes a 0600 PKCS#8 private key and an SPKI public key; the key id is sha256 of the raw public key', async () => {
    expect((await stat(keyA.privateKeyFile)).mode & 0o777).toBe(0o600);
    const privatePem = await readFile(keyA.privateKeyFile, 'utf8');
    const publicPem = await readFile(keyA.publicKeyFile, 'utf8');
    expect(privatePem).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    expect(publicPem).toMatch(/^-----BEGIN PUBLIC KEY-----/);
    const spki = createPublicKey(publicPem).export({ type: 'spki', format: 'der' });
    const raw = spki.subarray(spki.byteLength - 32); // Ed25519 SPKI = fixed 12-byte prefix + 32-byte key
    expect(keyA.keyId).toBe(createHash('sha256').update(raw).digest('hex').slice(0, 16));
    expect(keyA.keyId).not.toBe(keyB.keyId);
  });

  it('refuses to overwrite an existing key (either file) and leaves it untouched; the default name carries the key id', async () => {
    const before = await readFile(keyA.privateKeyFile, 'utf8');
    const e = await refusal(generateKeyPair(join(root, 'keys'), 'a'));
    expect(e.reason).toBe('bad-key');
    expect(e.message).toContain('refusing to overwrite');
    expect(await readFile(keyA.privateKeyFile, 'utf8')).toBe(before);
    await writeFile(join(root, 'keys', 'c.pub'), 'x');
    await refusal(generateKeyPair(join(root, 'keys'), 'c'));
    expect(existsSync(join(root, 'keys', 'c.key'))).toBe(false);
    const d = await generateKeyPair(join(root, 'keys'));
    expect(d.privateKeyFile).toBe(join(root, 'keys', `ast-edge-${d.keyId}.key`));
    await expect(generateKeyPair(root, '../escape')).rejects.toThrow(/no folders/);
  });

  it('refuses non-Ed25519 keys', async () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const file = join(root, 'rsa.key');
    await writeFile(file, rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const e = await refusal(signBundle(await copyOfGood(), file));
    expect(e.reason).toBe('bad-key');
    expect(e.message).toMatch(/rsa key.*Ed25519/);
    const pub = rsa.publicKey.export({ type: 'spki', format: 'pem' }) as string;
    expect((await refusal(loadTrustedKeys([pub]))).reason).toBe('bad-key');
  });
});

describe('sign and verify', () => {
  it('round trip on a folder: signature.json as specified, verified by the public key file, PEM text or KeyObject', async () => {
    const dir = await copyOfGood();
    const r = await signBundle(dir, keyA.privateKeyFile);
    expect(r.keyId).toBe(keyA.keyId);
    const sig = JSON.parse(await readFile(join(dir, 'signature.json'), 'utf8'));
    const manifestBytes = await readFile(join(dir, 'manifest.json'));
    expect(sig).toEqual({
      format: 'ast-edge-signature',
      version: 1,
      keyId: keyA.keyId,
      algorithm: 'ed25519',
      manifestSha256: createHash('sha256').update(manifestBytes).digest('hex'),
      signature: expect.stringMatching(/^[A-Za-z0-9+/]{86}==$/),
    });
    const pem = await readFile(keyA.publicKeyFile, 'utf8');
    expect(await verifyBundleSignature(dir, [keyA.publicKeyFile])).toEqual({ keyId: keyA.keyId, manifestSha256: sig.manifestSha256 });
    expect((await verifyBundleSignature(dir, [pem])).keyId).toBe(keyA.keyId);
    expect((await verifyBundleSignature(dir, [createPublicKey(pem)])).keyId).toBe(keyA.keyId);
    // readBundle does not mind signature.json (it is not in the manifest's file list).
    expect((await readBundle(dir)).manifest.id).toBe('tiny');
    expect(keyIdOf(createPublicKey(pem))).toBe(keyA.keyId);
  });

  it('the signature is plain Ed25519 over manifest.json: stock openssl verifies it', async (ctx) => {
    try {
      execFileSync('openssl', ['version'], { stdio: 'ignore' });
    } catch {
      ctx.skip('openssl not installed');
    }
    const dir = await signedCopy();
    const sig = JSON.parse(await readFile(join(dir, 'signature.json'), 'utf8'));
    await writeFile(join(root, 'sig.bin'), Buffer.from(sig.signature, 'base64'));
    const out = execFileSync(
      'openssl',
      ['pkeyutl', '-verify', '-pubin', '-inkey', keyA.publicKeyFile, '-rawin', '-in', join(dir, 'manifest.json'), '-sigfile', join(root, 'sig.bin')],
      { encoding: 'utf8' },
    );
    expect(out).toMatch(/Signature Verified Successfully/);
  });

  it('packBundle carries signature.json; a signed .tar verifies; a .tar can be signed in place', async () => {
    const dir = await signedCopy();
    const packed = join(root, 'signed.tar');
    await packBundle(dir, packed);
    const names: string[] = [];
    await tar.t({ file: packed, onReadEntry: (e) => void names.push(e.path) });
    expect(names).toContain('signature.json');
    const v = await verifySignedBundle(packed, [keyA.publicKeyFile]);
    expect(v.keyId).toBe(keyA.keyId);
    expect(v.manifest.id).toBe('tiny');

    const unsignedTar = join(root, 'unsigned.tar');
    await packBundle(good, unsignedTar);
    expect((await refusal(verifySignedBundle(unsignedTar, [keyA.publicKeyFile]))).reason).toBe('unsigned');
    await signBundle(unsignedTar, keyB.privateKeyFile);
    expect((await verifySignedBundle(unsignedTar, [keyB.publicKeyFile])).keyId).toBe(keyB.keyId);
  });

  it('a tampered weight file: readBundle fails its sha256 (the signature covers it through the manifest)', async () => {
    const dir = await signedCopy();
    const weights = join(dir, 'weights.safetensors');
    const bytes = await readFile(weights);
    bytes[bytes.length - 1] ^= 1;
    await writeFile(weights, bytes);
    // The signature itself is over manifest.json, which is intact...
    expect((await verifyBundleSignature(dir, [keyA.publicKeyFile])).keyId).toBe(keyA.keyId);
    // ...and the file no longer matches the manifest's sha256, which readBundle (and verifySignedBundle) refuse.
    await expect(readBundle(dir)).rejects.toThrow(/weights\.safetensors" has sha256 .* the manifest says/);
    const e = await verifySignedBundle(dir, [keyA.publicKeyFile]).catch((x) => x);
    expect(e).toBeInstanceOf(BundleError);
    expect(e.field).toBe('files.weights.safetensors');
    // Appending bytes is a size mismatch, caught the same way.
    await writeFile(weights, await readFile(join(good, 'weights.safetensors')));
    await appendFile(join(dir, 'head.onnx'), 'x');
    await expect(readBundle(dir)).rejects.toThrow(/head\.onnx" has \d+ bytes/);
  });

  it('a manifest edited after signing is refused as manifest-changed; editing manifestSha256 too makes it a bad signature', async () => {
    const dir = await signedCopy();
    const path = join(dir, 'manifest.json');
    const m = JSON.parse(await readFile(path, 'utf8'));
    m.calibration.threshold = 99; // lower the bar for defects: exactly what signing must catch
    const edited = JSON.stringify(m, null, 2) + '\n';
    await writeFile(path, edited);
    expect((await readBundle(dir)).manifest.calibration!.threshold).toBe(99); // still a valid bundle
    const e = await refusal(verifyBundleSignature(dir, [keyA.publicKeyFile]));
    expect(e.reason).toBe('manifest-changed');
    expect(e.message).toContain('changed after signing');
    await editSignature(dir, (s) => (s.manifestSha256 = createHash('sha256').update(edited).digest('hex')));
    expect((await refusal(verifyBundleSignature(dir, [keyA.publicKeyFile]))).reason).toBe('bad-signature');
  });

  it('a signature claiming another trusted key (wrong key) is a bad signature', async () => {
    const dir = await signedCopy(keyA);
    await editSignature(dir, (s) => (s.keyId = keyB.keyId));
    const e = await refusal(verifyBundleSignature(dir, [keyA.publicKeyFile, keyB.publicKeyFile]));
    expect(e.reason).toBe('bad-signature');
    expect(e.keyId).toBe(keyB.keyId);
    // A signature made by B over another manifest, pasted in, fails too.
    const other = await signedCopy(keyB);
    const m = JSON.parse(await readFile(join(other, 'manifest.json'), 'utf8'));
    m.version = '0.2.0';
    await writeFile(join(other, 'manifest.json'), JSON.stringify(m));
    const theirs = JSON.parse(await readFile(join(dir, 'signature.json'), 'utf8'));
    await editSignature(other, (s) => {
      s.signature = theirs.signature;
      s.manifestSha256 = createHash('sha256').update(JSON.stringify(m)).digest('hex');
    });
    expect((await refusal(verifyBundleSignature(other, [keyB.publicKeyFile]))).reason).toBe('bad-signature');
  });

  it('a key id that is not trusted is refused, listing the trusted ids', async () => {
    const dir = await signedCopy(keyA);
    const e = await refusal(verifyBundleSignature(dir, [keyB.publicKeyFile]));
    expect(e.reason).toBe('unknown-key');
    expect(e.keyId).toBe(keyA.keyId);
    expect(e.trustedKeyIds).toEqual([keyB.keyId]);
    expect(e.message).toContain(`signed by key ${keyA.keyId}, which is not trusted (trusted: ${keyB.keyId})`);
    const none = await refusal(verifyBundleSignature(dir, []));
    expect(none.message).toContain('trusted: none');
  });

  it('two trusted keys (rotation): bundles signed by either verify; re-signing replaces the signature', async () => {
    const both = await loadTrustedKeys([keyB.publicKeyFile, keyA.publicKeyFile, keyA.publicKeyFile]);
    expect(both.map((k) => k.keyId)).toEqual([keyB.keyId, keyA.keyId]);
    const dir = await signedCopy(keyA);
    expect((await verifyBundleSignature(dir, both)).keyId).toBe(keyA.keyId);
    await signBundle(dir, keyB.privateKeyFile);
    expect((await verifyBundleSignature(dir, both)).keyId).toBe(keyB.keyId);
    // Once A is dropped from the trusted list, only B-signed bundles pass.
    expect((await verifyBundleSignature(dir, [keyB.publicKeyFile])).keyId).toBe(keyB.keyId);
    expect((await refusal(verifyBundleSignature(await signedCopy(keyA), [keyB.publicKeyFile]))).reason).toBe('unknown-key');
  });

  it('a malformed signature.json is refused naming the field', async () => {
    const cases: [string, (s: Record<string, unknown>) => void, string][] = [
      ['missing keyId', (s) => delete s.keyId, 'keyId'],
      ['short keyId', (s) => (s.keyId = 'abc'), 'keyId'],
      ['wrong algorithm', (s) => (s.algorithm = 'rsa'), 'algorithm'],
      ['not base64', (s) => (s.signature = 'not base64!'), 'signature'],
      ['truncated signature', (s) => (s.signature = Buffer.alloc(32).toString('base64')), 'signature'],
      ['bad manifestSha256', (s) => (s.manifestSha256 = 'ABC'), 'manifestSha256'],
      ['future version', (s) => (s.version = 2), 'version'],
      ['unknown field', (s) => (s.extra = 1), 'extra'],
    ];
    const dir = await signedCopy();
    const original = await readFile(join(dir, 'signature.json'), 'utf8');
    for (const [what, edit, field] of cases) {
      await writeFile(join(dir, 'signature.json'), original);
      await editSignature(dir, edit);
      const e = await refusal(verifyBundleSignature(dir, [keyA.publicKeyFile]));
      expect(e.reason, what).toBe('malformed');
      expect(e.field, what).toBe(field);
      expect(e.message, what).toContain(field);
    }
    await writeFile(join(dir, 'signature.json'), '{"format": "ast-edge-sig');
    const e = await refusal(verifyBundleSignature(dir, [keyA.publicKeyFile]));
    expect(e).toMatchObject({ reason: 'malformed', field: '(root)' });
    expect(e.message).toMatch(/not valid JSON/);
  });

  it('an unsigned bundle is refused as unsigned', async () => {
    const e = await refusal(verifyBundleSignature(good, [keyA.publicKeyFile]));
    expect(e.reason).toBe('unsigned');
    expect(e.message).toContain('not signed');
  });

  it('a bundle cannot list signature.json or manifest.json as one of its files', async () => {
    const draft = JSON.parse(await readFile(join(good, 'manifest.json'), 'utf8'));
    delete draft.files;
    const files = { 'head.onnx': await readFile(join(good, 'head.onnx')), 'weights.safetensors': await readFile(join(good, 'weights.safetensors')) };
    await expect(writeBundle(join(root, 'reserved'), draft, { ...files, 'signature.json': new Uint8Array(3) })).rejects.toThrow(
      /files\.signature\.json: "signature\.json" is reserved/,
    );
  });

  it('signing refuses a bundle whose files do not match its manifest', async () => {
    const dir = await copyOfGood();
    await appendFile(join(dir, 'head.onnx'), 'x');
    await expect(signBundle(dir, keyA.privateKeyFile)).rejects.toBeInstanceOf(BundleError);
    expect(existsSync(join(dir, 'signature.json'))).toBe(false);
  });
});

describe('CLI commands', () => {
  it('keygen, sign and verify print one line each; an untrusted bundle exits 1 with the reason', async () => {
    const io = capture();
    expect(await keygenCommand(join(root, 'cli-keys'), 'ops', io)).toBe(0);
    expect(io.outLines).toHaveLength(1);
    const keyId = /^key ([0-9a-f]{16}):/.exec(io.outLines[0]!)![1]!;
    const pub = join(root, 'cli-keys', 'ops.pub');

    const dir = await copyOfGood();
    expect(await signCommand(join(root, 'cli-keys', 'ops.key'), dir, io)).toBe(0);
    expect(io.outLines[1]).toMatch(new RegExp(`^signed .* with key ${keyId} \\(manifest sha256 [0-9a-f]{64}\\)$`));

    expect(await verifyCommand([keyB.publicKeyFile, pub], dir, io)).toBe(0);
    expect(io.outLines[2]).toMatch(new RegExp(`^verified: tiny 0\\.1\\.0 signed by key ${keyId}, 2 files checked`));

    expect(await verifyCommand([keyB.publicKeyFile], dir, io)).toBe(1);
    expect(io.errLines[0]).toMatch(new RegExp(`^not verified \\(unknown-key\\): .*signed by key ${keyId}.*trusted: ${keyB.keyId}`));
    expect(await verifyCommand([pub], good, io)).toBe(1);
    expect(io.errLines[1]).toMatch(/^not verified \(unsigned\)/);
    await appendFile(join(dir, 'head.onnx'), 'x');
    expect(await verifyCommand([pub], dir, io)).toBe(1);
    expect(io.errLines[2]).toMatch(/^not verified \(files, files\.head\.onnx\)/);
    await expect(verifyCommand([join(root, 'missing.pub')], dir, io)).rejects.toThrow(/cannot read key file/);
    expect(io.outLines).toHaveLength(3);
  });
});
