/**
 * `signature.json`: a bundle's detached Ed25519 signature. It sits beside manifest.json and is not listed
 * in the manifest's `files` (it cannot hash itself). What is signed is the exact bytes of manifest.json;
 * the manifest holds every other file's sha256, so one signature covers the whole bundle.
 */
import { z } from 'zod';

export const SIGNATURE_FILE = 'signature.json';
export const SIGNATURE_FORMAT = 'ast-edge-signature';
export const SIGNATURE_VERSION = 1;
/** Ed25519 signatures are always 64 bytes. */
export const ED25519_SIGNATURE_BYTES = 64;

const HEX64 = /^[0-9a-f]{64}$/;

export const BundleSignatureSchema = z.strictObject({
  format: z.literal(SIGNATURE_FORMAT),
  version: z.literal(SIGNATURE_VERSION),
  /** First 16 hex digits of sha256(raw 32-byte public key): names the key without shipping it. */
  keyId: z.string().regex(/^[0-9a-f]{16}$/, 'must be 16 lowercase hex digits'),
  algorithm: z.literal('ed25519'),
  /**
   * sha256 of the signed manifest.json bytes. Not itself trusted (it is not signed): it only lets a
   * verifier tell "manifest edited after signing" apart from "signature forged or from another key".
   */
  manifestSha256: z.string().regex(HEX64, 'must be 64 lowercase hex digits'),
  signature: z
    .base64('must be base64')
    .refine((s) => Buffer.from(s, 'base64').byteLength === ED25519_SIGNATURE_BYTES, `must decode to ${ED25519_SIGNATURE_BYTES} bytes`),
});
export type BundleSignature = z.infer<typeof BundleSignatureSchema>;
