/**
 * Idents proven by a key (DIVA's own TODO: "check validity of ident"). A
 * key ident is an Ed25519 public key, written as its 32 raw bytes in
 * unpadded base64url: 43 characters from `A–Z a–z 0–9 - _`, which fits the
 * protocol's ident rules. A client proves it holds the private key by
 * signing a fresh challenge the server made for this connection:
 *
 * ```text
 * message   = "diva-ident-proof\n" + challenge + "\n" + ident   (UTF-8)
 * signature = base64url(Ed25519.sign(privateKey, message))      (86 characters)
 * ```
 *
 * Challenges are random (256 bits), single-use, bound to the connection that
 * asked for them and expire; so a captured proof is worth nothing anywhere
 * else. Verification uses WebCrypto's Ed25519, which Deno and Chromium both
 * have.
 *
 * @module
 */

/** What a signed proof message starts with, so a signature means nothing else. */
export const PROOF_CONTEXT = "diva-ident-proof";

/** Milliseconds a challenge stays usable. */
export const CHALLENGE_TTL_MS = 60_000;

const B64URL = /^[A-Za-z0-9_-]+$/;

/** Unpadded base64url of `bytes`. */
export function base64url(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** The bytes of unpadded base64url text, or undefined when it is not such text. */
export function fromBase64url(text: string): Uint8Array<ArrayBuffer> | undefined {
  if (!B64URL.test(text) || text.length % 4 === 1) return undefined;
  const b64 = text.replaceAll("-", "+").replaceAll("_", "/");
  try {
    const bin = atob(b64 + "===".slice((b64.length + 3) % 4));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  } catch {
    return undefined;
  }
}

/**
 * True when `ident` has the form of a key ident (43 base64url characters of
 * a 32-byte key).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(isKeyIdent("A".repeat(43)), true);
 * assert.equal(isKeyIdent("alice"), false);
 * ```
 */
export function isKeyIdent(ident: string): boolean {
  return ident.length === 43 && fromBase64url(ident)?.length === 32;
}

/** The bytes a client signs to prove `ident` with `challenge`. */
export function proofMessage(challenge: string, ident: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(`${PROOF_CONTEXT}\n${challenge}\n${ident}`);
}

/**
 * True when `signature` (base64url) is `ident`'s key's signature of the
 * proof message for `challenge`. Never throws: anything malformed is false.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const keys = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]) as CryptoKeyPair;
 * const ident = base64url(new Uint8Array(await crypto.subtle.exportKey("raw", keys.publicKey)));
 * const sig = new Uint8Array(
 *   await crypto.subtle.sign("Ed25519", keys.privateKey, proofMessage("c1", ident)),
 * );
 * assert.equal(await verifyProof(ident, "c1", base64url(sig)), true);
 * assert.equal(await verifyProof(ident, "c2", base64url(sig)), false);
 * ```
 */
export async function verifyProof(
  ident: string,
  challenge: string,
  signature: string,
): Promise<boolean> {
  const raw = fromBase64url(ident);
  const sig = fromBase64url(signature);
  if (raw?.length !== 32 || sig?.length !== 64) return false;
  try {
    const key = await crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
    return await crypto.subtle.verify("Ed25519", key, sig, proofMessage(challenge, ident));
  } catch {
    return false;
  }
}
