/**
 * `ast-agent keygen`, `bundle sign`, `bundle verify`: one line of output each. Errors other than a failed
 * verification are thrown (main prints them, exit 2); a bundle that does not verify prints why on stderr
 * and returns exit code 1, so scripts can tell "untrusted bundle" from "wrong command line".
 */
import { resolve } from 'node:path';
import { BundleError } from '../bundle/bundle-store.js';
import { generateKeyPair, signBundle, SignatureError, verifySignedBundle } from '../bundle/signing.js';

export interface CommandOutput {
  out(line: string): void;
  err(line: string): void;
}

const consoleOutput: CommandOutput = {
  out: (line) => process.stdout.write(`${line}\n`),
  err: (line) => process.stderr.write(`${line}\n`),
};

/** Exit code of a bundle that is not trusted (bad hash, unsigned, unknown key, bad signature). */
export const EXIT_NOT_VERIFIED = 1;

export async function keygenCommand(outDir: string, name?: string, io: CommandOutput = consoleOutput): Promise<number> {
  const k = await generateKeyPair(outDir, name);
  io.out(`key ${k.keyId}: private ${k.privateKeyFile} (keep secret, on the signing machine only), public ${k.publicKeyFile} (copy to devices)`);
  return 0;
}

export async function signCommand(keyFile: string, bundle: string, io: CommandOutput = consoleOutput): Promise<number> {
  const r = await signBundle(bundle, keyFile);
  io.out(`signed ${r.bundle} with key ${r.keyId} (manifest sha256 ${r.manifestSha256})`);
  return 0;
}

export async function verifyCommand(pubFiles: string[], bundle: string, io: CommandOutput = consoleOutput): Promise<number> {
  if (pubFiles.length === 0) throw new Error('bundle verify needs at least one --pub KEY.pub');
  try {
    const r = await verifySignedBundle(bundle, pubFiles);
    const files = Object.keys(r.manifest.files).length;
    io.out(`verified: ${r.manifest.id} ${r.manifest.version} signed by key ${r.keyId}, ${files} files checked (${resolve(bundle)})`);
    return 0;
  } catch (e) {
    // A key file that cannot be loaded is a usage error, not a verdict on the bundle.
    if (e instanceof SignatureError && e.reason !== 'bad-key') {
      io.err(`not verified (${e.reason}${e.field ? `, field ${e.field}` : ''}): ${e.message}`);
      return EXIT_NOT_VERIFIED;
    }
    if (e instanceof BundleError) {
      io.err(`not verified (files${e.field ? `, ${e.field}` : ''}): ${e.message}`);
      return EXIT_NOT_VERIFIED;
    }
    throw e;
  }
}
