/**
 * Signed bundles (Ed25519, node:crypto). A build machine signs a bundle once; devices trust a short list
 * of public keys and refuse any bundle not signed by one of them, so a model pushed over the network
 * cannot be swapped or forged on the way.
 *
 * What is signed: the exact bytes of manifest.json. The manifest lists every other file with its sha256
 * and size (checked by readBundle), so signature + file hashes cover the whole bundle. Signing the file's
 * bytes rather than a re-serialisation leaves nothing to canonicalise, and an operator can check a
 * signature with stock tools: `openssl pkeyutl -verify -pubin -inkey K.pub -rawin -in manifest.json
 * -sigfile <(jq -r .signature signature.json | base64 -d)`.
 *
 * Keys: PKCS#8 PEM private key (mode 0600) and SPKI PEM public key. A key id is the first 16 hex digits
 * of sha256(raw 32-byte public key); signature.json names the key by it, so several trusted keys (key
 * rotation: trust old and new, re-sign, drop the old one) cost one lookup.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { writeFileAtomically } from '../storage/atomic-file.js';
import { describeIssues } from '../config/bundle-manifest.js';
import {
  BundleSignatureSchema,
  SIGNATURE_FILE,
  SIGNATURE_FORMAT,
  SIGNATURE_VERSION,
  type BundleSignature,
} from '../config/signature-schema.js';
import { BundleError, packBundle, readBundle, type LoadedBundle } from './bundle-store.js';

export type SignatureErrorReason =
  /** No signature.json next to manifest.json. */
  | 'unsigned'
  /** signature.json is not JSON or a field is wrong (`field` names it). */
  | 'malformed'
  /** Signed by a key that is not in the trusted list (`trustedKeyIds` lists those that are). */
  | 'unknown-key'
  /** manifest.json is not the one that was signed (its sha256 differs from manifestSha256). */
  | 'manifest-changed'
  /** The signature does not verify with the named key: forged, or signature.json tampered with. */
  | 'bad-signature'
  /** A key file is missing, unreadable, or not an Ed25519 key. */
  | 'bad-key';

export class SignatureError extends Error {
  readonly reason: SignatureErrorReason;
  /** The bundle or key file the error is about. */
  readonly path: string;
  /** For `malformed`: the signature.json field at fault. */
  readonly field?: string;
  /** The key id the signature names, when it could be read. */
  readonly keyId?: string;
  /** For `unknown-key`: the ids that are trusted. */
  readonly trustedKeyIds?: string[];

  constructor(
    reason: SignatureErrorReason,
    message: string,
    path: string,
    extra: { field?: string; keyId?: string; trustedKeyIds?: string[]; cause?: unknown } = {},
  ) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = 'SignatureError';
    this.reason = reason;
    this.path = path;
    if (extra.field !== undefined) this.field = extra.field;
    if (extra.keyId !== undefined) this.keyId = extra.keyId;
    if (extra.trustedKeyIds !== undefined) this.trustedKeyIds = extra.trustedKeyIds;
  }
}

/** A public key the device accepts signatures from. */
export interface TrustedKey {
  keyId: string;
  key: KeyObject;
  /** Where it came from (file path or "inline"), for messages. */
  source: string;
}

/** A public KeyObject, SPKI PEM text, or the path of a `.pub` file. */
export type PublicKeySource = KeyObject | string;

const sha256Hex = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

/** The 32 raw bytes of an Ed25519 public key (JWK `x`), which the key id is derived from. */
function rawPublicKey(key: KeyObject): Buffer {
  const jwk = key.export({ format: 'jwk' });
  return Buffer.from(jwk.x as string, 'base64url');
}

export function keyIdOf(key: KeyObject): string {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return sha256Hex(rawPublicKey(pub)).slice(0, 16);
}

function requireEd25519(key: KeyObject, path: string): KeyObject {
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new SignatureError('bad-key', `${path}: is a ${key.asymmetricKeyType ?? key.type} key, bundles are signed with Ed25519`, path);
  }
  return key;
}

async function readKeyFile(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    throw new SignatureError('bad-key', `cannot read key file ${path}: ${(e as Error).message}`, path, { cause: e });
  }
}

export async function loadPrivateKey(file: string): Promise<KeyObject> {
  const path = resolve(file);
  const pem = await readKeyFile(path);
  try {
    return requireEd25519(createPrivateKey(pem), path);
  } catch (e) {
    if (e instanceof SignatureError) throw e;
    throw new SignatureError('bad-key', `${path}: not a PEM private key (${(e as Error).message})`, path, { cause: e });
  }
}

async function loadPublicKey(source: PublicKeySource): Promise<TrustedKey> {
  if (typeof source !== 'string') {
    const key = requireEd25519(source.type === 'private' ? createPublicKey(source) : source, 'inline key');
    return { keyId: keyIdOf(key), key, source: 'inline key' };
  }
  const inline = source.includes('-----BEGIN');
  const path = inline ? 'inline key' : resolve(source);
  const pem = inline ? source : await readKeyFile(path);
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch (e) {
    throw new SignatureError('bad-key', `${path}: not a PEM public key (${(e as Error).message})`, path, { cause: e });
  }
  requireEd25519(key, path);
  return { keyId: keyIdOf(key), key, source: path };
}

/** Loads public keys once (the agent verifies many bundles against the same list). Duplicates are merged. */
export async function loadTrustedKeys(sources: readonly (PublicKeySource | TrustedKey)[]): Promise<TrustedKey[]> {
  const byId = new Map<string, TrustedKey>();
  for (const s of sources) {
    const k = typeof s === 'object' && 'keyId' in s ? s : await loadPublicKey(s);
    if (!byId.has(k.keyId)) byId.set(k.keyId, k);
  }
  return [...byId.values()];
}

export interface GeneratedKeyPair {
  keyId: string;
  privateKeyFile: string;
  publicKeyFile: string;
}

const KEY_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

/**
 * Writes `<name>.key` (PKCS#8 PEM, 0600) and `<name>.pub` (SPKI PEM) into `outDir`. Refuses to overwrite
 * either: a replaced signing key silently invalidates every device's trust. The default name carries the
 * key id, so successive keys never collide.
 */
export async function generateKeyPair(outDir: string, name?: string): Promise<GeneratedKeyPair> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const keyId = keyIdOf(publicKey);
  const base = name ?? `ast-edge-${keyId}`;
  if (!KEY_NAME.test(base)) {
    throw new SignatureError('bad-key', `key name "${base}" must be letters, digits, . _ - (no folders)`, base);
  }
  const dir = resolve(outDir);
  await mkdir(dir, { recursive: true });
  const privateKeyFile = join(dir, `${base}.key`);
  const publicKeyFile = join(dir, `${base}.pub`);
  for (const f of [privateKeyFile, publicKeyFile]) {
    if (await stat(f).then(() => true, () => false)) {
      throw new SignatureError('bad-key', `refusing to overwrite ${f}: choose another --name or move the old key away`, f);
    }
  }
  const written: string[] = [];
  try {
    // 'wx' fails if the file appeared since the check; 0600 is applied at creation (umask only removes bits).
    for (const [file, pem, mode] of [
      [privateKeyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 0o600],
      [publicKeyFile, publicKey.export({ type: 'spki', format: 'pem' }) as string, 0o644],
    ] as const) {
      const fh = await open(file, 'wx', mode);
      written.push(file);
      try {
        await fh.writeFile(pem);
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
  } catch (e) {
    // Never leave half a pair: a lone .key without its .pub (or the reverse) is a trap later.
    for (const f of written) await rm(f, { force: true });
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new SignatureError('bad-key', `refusing to overwrite ${(e as NodeJS.ErrnoException).path}`, String((e as NodeJS.ErrnoException).path), { cause: e });
    }
    throw e;
  }
  return { keyId, privateKeyFile, publicKeyFile };
}

export interface SignResult {
  keyId: string;
  manifestSha256: string;
  /** The signed bundle (folder or .tar, as given). */
  bundle: string;
}

/** Signs a bundle folder in place: writes signature.json (atomically) next to manifest.json. */
async function signFolder(dir: string, key: KeyObject): Promise<Omit<SignResult, 'bundle'>> {
  // readBundle first: signing a bundle whose files do not match its manifest would vouch for a broken one.
  await readBundle(dir);
  const manifestBytes = await readFile(join(dir, 'manifest.json'));
  const keyId = keyIdOf(key);
  const signature: BundleSignature = {
    format: SIGNATURE_FORMAT,
    version: SIGNATURE_VERSION,
    keyId,
    algorithm: 'ed25519',
    manifestSha256: sha256Hex(manifestBytes),
    signature: sign(null, manifestBytes, key).toString('base64'),
  };
  await writeFileAtomically(join(dir, SIGNATURE_FILE), JSON.stringify(signature, null, 2) + '\n');
  return { keyId, manifestSha256: signature.manifestSha256 };
}

/**
 * Signs a bundle folder, or a .tar (unpacked to a temp folder, signed, repacked over the original
 * atomically). Re-signing replaces an earlier signature (key rotation).
 */
export async function signBundle(bundle: string, privateKeyFile: string): Promise<SignResult> {
  const key = await loadPrivateKey(privateKeyFile);
  const path = resolve(bundle);
  const info = await stat(path).catch(() => null);
  if (!info) throw new BundleError(`bundle ${path} does not exist`, path);
  if (info.isDirectory()) return { ...(await signFolder(path, key)), bundle: path };
  const tmp = await mkdtemp(join(tmpdir(), 'ast-sign-'));
  try {
    const loaded = await readBundle(path, { extractTo: tmp });
    const result = await signFolder(loaded.dir, key);
    await packBundle(loaded.dir, path);
    return { ...result, bundle: path };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

async function readSignature(dir: string): Promise<BundleSignature> {
  const path = join(dir, SIGNATURE_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new SignatureError('unsigned', `${dir}: bundle is not signed (no ${SIGNATURE_FILE})`, dir);
    throw new SignatureError('malformed', `${path}: cannot read (${(e as Error).message})`, dir, { cause: e });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new SignatureError('malformed', `${path}: not valid JSON (${(e as Error).message})`, dir, { field: '(root)' });
  }
  const parsed = BundleSignatureSchema.safeParse(json);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    const field = first?.path.length ? first.path.map(String).join('.') : first?.code === 'unrecognized_keys' ? first.keys.join(',') : '(root)';
    throw new SignatureError('malformed', `${path} is invalid: ${describeIssues(parsed.error)}`, dir, { field });
  }
  return parsed.data;
}

export interface VerifiedSignature {
  keyId: string;
  manifestSha256: string;
}

/**
 * Checks a bundle folder's signature.json against manifest.json and the trusted keys. It does not hash
 * the other files: readBundle does that against the manifest (see verifySignedBundle for both).
 */
export async function verifyBundleSignature(
  bundleDir: string,
  trustedKeys: readonly (PublicKeySource | TrustedKey)[],
): Promise<VerifiedSignature> {
  const dir = resolve(bundleDir);
  const trusted = await loadTrustedKeys(trustedKeys);
  const sig = await readSignature(dir);
  const key = trusted.find((k) => k.keyId === sig.keyId);
  const ids = trusted.map((k) => k.keyId);
  if (!key) {
    throw new SignatureError(
      'unknown-key',
      `${dir}: signed by key ${sig.keyId}, which is not trusted (trusted: ${ids.length ? ids.join(', ') : 'none — configure at least one public key'})`,
      dir,
      { keyId: sig.keyId, trustedKeyIds: ids },
    );
  }
  let manifestBytes: Buffer;
  try {
    manifestBytes = await readFile(join(dir, 'manifest.json'));
  } catch (e) {
    throw new SignatureError('manifest-changed', `${dir}: no manifest.json to check the signature against`, dir, { keyId: sig.keyId, cause: e });
  }
  const actual = sha256Hex(manifestBytes);
  if (actual !== sig.manifestSha256) {
    throw new SignatureError(
      'manifest-changed',
      `${dir}: manifest.json was changed after signing (sha256 ${actual}, signed ${sig.manifestSha256})`,
      dir,
      { keyId: sig.keyId },
    );
  }
  if (!verify(null, manifestBytes, key.key, Buffer.from(sig.signature, 'base64'))) {
    throw new SignatureError('bad-signature', `${dir}: signature does not verify with key ${sig.keyId} (${key.source}): forged or tampered`, dir, {
      keyId: sig.keyId,
    });
  }
  return { keyId: sig.keyId, manifestSha256: actual };
}

/**
 * Everything a device checks before trusting a bundle folder or .tar: manifest valid, every file's sha256,
 * and the signature by a trusted key. A .tar is unpacked to a temp folder that is removed afterwards.
 */
export async function verifySignedBundle(
  bundle: string,
  trustedKeys: readonly (PublicKeySource | TrustedKey)[],
): Promise<VerifiedSignature & { manifest: LoadedBundle['manifest'] }> {
  // Keys first: an unreadable key file is the caller's mistake, whatever state the bundle is in.
  const trusted = await loadTrustedKeys(trustedKeys);
  const path = resolve(bundle);
  const isFile = (await stat(path).catch(() => null))?.isFile() ?? false;
  const tmp = isFile ? await mkdtemp(join(tmpdir(), 'ast-verify-')) : null;
  try {
    const loaded = await readBundle(path, tmp ? { extractTo: tmp } : {});
    return { ...(await verifyBundleSignature(loaded.dir, trusted)), manifest: loaded.manifest };
  } finally {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }
}
