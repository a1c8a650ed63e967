/**
 * ICE server lists with ephemeral TURN credentials (the TURN REST API scheme
 * that coturn's `use-auth-secret` accepts). Pure: time is passed in.
 *
 * @module
 */

/** An `RTCIceServer` entry, ready for `new RTCPeerConnection({iceServers})`. */
export interface IceServer {
  /** One URL or several. */
  urls: string | string[];
  /** TURN user name: `"<unix expiry>:<ident>"`. */
  username?: string;
  /** TURN password: `base64(HMAC-SHA1(secret, username))`. */
  credential?: string;
}

/** What the ICE answer is made from. */
export interface IceConfig {
  /** STUN URLs. */
  stunUrls: readonly string[];
  /** TURN URLs; used only with a secret. */
  turnUrls: readonly string[];
  /** Shared secrets; the first signs. */
  turnSecrets: readonly string[];
  /** Credential lifetime in seconds. */
  turnTtl: number;
}

/** A TURN REST API credential pair. */
export interface TurnCredential {
  /** `"<unix expiry>:<ident>"`. */
  username: string;
  /** `base64(HMAC-SHA1(secret, username))`. */
  credential: string;
}

const encoder = new TextEncoder();
const keys = new Map<string, Promise<CryptoKey>>();

function hmacKey(secret: string): Promise<CryptoKey> {
  let key = keys.get(secret);
  if (key === undefined) {
    key = crypto.subtle.importKey(
      "raw",
      encoder.encode(secret),
      { name: "HMAC", hash: "SHA-1" },
      false,
      ["sign"],
    );
    keys.set(secret, key);
  }
  return key;
}

function base64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s);
}

/**
 * Mints a TURN credential valid until `floor(nowSeconds) + ttl` (unix
 * seconds). Throws a `RangeError` for an empty secret or a ttl that is not a
 * positive whole number.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const c = await turnCredential("secret", "alice", 1_700_000_000, 3600);
 * assert.equal(c.username, "1700003600:alice");
 * assert.match(c.credential, /^[A-Za-z0-9+\/]{27}=$/);
 * ```
 */
export async function turnCredential(
  secret: string,
  ident: string,
  nowSeconds: number,
  ttl: number,
): Promise<TurnCredential> {
  // An empty key makes WebCrypto throw a DataError; a fractional or negative
  // lifetime would mint a username coturn cannot parse or has already expired.
  if (secret === "") throw new RangeError("the TURN secret is empty");
  if (!Number.isFinite(nowSeconds)) throw new RangeError(`bad time ${nowSeconds}`);
  if (!Number.isSafeInteger(ttl) || ttl <= 0) throw new RangeError(`bad TURN ttl ${ttl}`);
  const username = `${Math.floor(nowSeconds) + ttl}:${ident}`;
  const mac = await crypto.subtle.sign("HMAC", await hmacKey(secret), encoder.encode(username));
  return { username, credential: base64(new Uint8Array(mac)) };
}

/**
 * The `iceServers` array for one connection: the STUN entry, and a TURN entry
 * with fresh credentials when a secret is configured (none without one, and
 * none when `turn` is false: the connection may not have TURN).
 */
export async function iceServers(
  config: IceConfig,
  ident: string,
  nowSeconds: number,
  turn = true,
): Promise<IceServer[]> {
  const out: IceServer[] = [];
  if (config.stunUrls.length > 0) out.push({ urls: [...config.stunUrls] });
  if (turn && config.turnSecrets.length > 0 && config.turnUrls.length > 0) {
    const c = await turnCredential(config.turnSecrets[0], ident, nowSeconds, config.turnTtl);
    out.push({ urls: [...config.turnUrls], username: c.username, credential: c.credential });
  }
  return out;
}
