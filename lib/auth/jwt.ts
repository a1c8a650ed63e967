/**
 * Verifying bearer tokens (JWT) with `jose`: shared HS256 secrets (several,
 * for rotation), public keys from PEM or JWK files (ES256, RS256, EdDSA), and
 * a JWKS URL fetched and cached by `jose` (a token signed with a key it has
 * not seen makes it fetch again, so a rotation needs no restart). `exp`,
 * `nbf`, `aud` and `iss` are checked with a small clock skew.
 *
 * No token, and no part of one, is ever logged or put in an error message.
 *
 * @module
 */

import * as jose from "jose";
import { type Grant, GrantError, grantFromClaims } from "./grant.ts";

/** Why a token was refused, for the answer and for metrics. */
export const REFUSALS = [
  "missing",
  "malformed",
  "bad-signature",
  "expired",
  "not-yet-valid",
  "bad-audience",
  "bad-issuer",
  "bad-claims",
  "unavailable",
] as const;

/** One of {@link REFUSALS}. */
export type Refusal = typeof REFUSALS[number];

/** A refused token; `reason` says why, and the message never holds the token. */
export class TokenError extends Error {
  /** Names the error class in messages. */
  override name = "TokenError";
  /** Why the token was refused. */
  readonly reason: Refusal;

  /** A refusal for `reason`, described by `message`. */
  constructor(reason: Refusal, message: string) {
    super(message);
    this.reason = reason;
  }
}

/** The algorithms accepted: one per kind of key. */
export const ALGORITHMS = ["HS256", "ES256", "RS256", "EdDSA"] as const;

/** Where keys come from and what the claims must say. */
export interface VerifierOptions {
  /** HS256 shared secrets; any of them verifies. */
  secrets?: readonly string[];
  /** Public keys as PEM (SPKI) or JWK JSON text. */
  publicKeys?: readonly string[];
  /** A JWKS URL, fetched when needed and cached. */
  jwksUrl?: string;
  /** The `aud` a token must name, if set. */
  audience?: string;
  /** The `iss` a token must have, if set. */
  issuer?: string;
  /** Seconds of clock difference tolerated on `exp` and `nbf`. */
  clockSkew?: number;
  /** Time a JWKS fetch may take, in ms. Default 5000. */
  jwksTimeoutMs?: number;
  /** Least time between two JWKS fetches for an unknown key, in ms. Default 30,000. */
  jwksCooldownMs?: number;
}

type Key = CryptoKey | Uint8Array;
type Resolver = (header: jose.JWTHeaderParameters) => Promise<Key | Key[]>;

const encoder = new TextEncoder();

/** The `alg` a PEM or JWK public key is used with, from its key type. */
function algOf(jwk: jose.JWK): (typeof ALGORITHMS)[number] {
  if (jwk.kty === "RSA") return "RS256";
  if (jwk.kty === "EC" && jwk.crv === "P-256") return "ES256";
  if (jwk.kty === "OKP" && jwk.crv === "Ed25519") return "EdDSA";
  throw new Error(`unsupported key type ${jwk.kty}${jwk.crv ? " " + jwk.crv : ""}`);
}

/** Imports one public key (PEM SPKI or JWK JSON), with the algorithm it signs with. */
async function importPublic(text: string): Promise<{ alg: string; key: Key }> {
  const t = text.trim();
  if (t.startsWith("{")) {
    const jwk = JSON.parse(t) as jose.JWK;
    const alg = jwk.alg ?? algOf(jwk);
    return { alg, key: await jose.importJWK(jwk, alg) as Key };
  }
  // A PEM says nothing of its algorithm: try each kind of key in turn.
  for (const alg of ["ES256", "RS256", "EdDSA"]) {
    try {
      const key = await jose.importSPKI(t, alg, { extractable: true });
      return { alg, key };
    } catch {
      // not this kind
    }
  }
  throw new Error("not a PEM public key of a supported type (EC P-256, RSA, Ed25519)");
}

function refusal(e: unknown): TokenError {
  if (e instanceof TokenError) return e;
  if (e instanceof GrantError) return new TokenError("bad-claims", e.message);
  const code = (e as { code?: string }).code;
  const claim = (e as { claim?: string }).claim;
  switch (code) {
    case "ERR_JWT_EXPIRED":
      return new TokenError("expired", "the token has expired");
    case "ERR_JWT_CLAIM_VALIDATION_FAILED":
      if (claim === "nbf") return new TokenError("not-yet-valid", "the token is not valid yet");
      if (claim === "aud") {
        return new TokenError("bad-audience", "the token is for another audience");
      }
      if (claim === "iss") return new TokenError("bad-issuer", "the token is from another issuer");
      return new TokenError("bad-claims", `the token's ${claim ?? "claims"} claim is wrong`);
    case "ERR_JWS_SIGNATURE_VERIFICATION_FAILED":
    case "ERR_JWKS_NO_MATCHING_KEY":
    case "ERR_JOSE_ALG_NOT_ALLOWED":
    case "ERR_JWKS_MULTIPLE_MATCHING_KEYS":
      return new TokenError("bad-signature", "no configured key verifies the token");
    case "ERR_JWKS_TIMEOUT":
    case "ERR_JWKS_INVALID":
      return new TokenError("unavailable", "the token's keys cannot be fetched right now");
    default:
      return new TokenError("malformed", "the token is not a well-formed JWT");
  }
}

/**
 * Verifies tokens against the configured keys and makes {@link Grant}s.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as jose from "jose";
 * const secret = "a-shared-secret-of-at-least-32-bytes!";
 * const verifier = await TokenVerifier.create({ secrets: [secret], audience: "signal" });
 * const token = await new jose.SignJWT({ rooms: ["team-*"] })
 *   .setProtectedHeader({ alg: "HS256" }).setSubject("u1").setAudience("signal")
 *   .setExpirationTime("1h").sign(new TextEncoder().encode(secret));
 * const grant = await verifier.verify(token);
 * assert.equal(grant.subject, "u1");
 * assert.equal(grant.room("team-blue"), true);
 * await assert.rejects(verifier.verify("not.a.token"), { reason: "malformed" });
 * ```
 */
export class TokenVerifier {
  readonly #resolvers: Resolver[];
  readonly #options: jose.JWTVerifyOptions;

  private constructor(resolvers: Resolver[], options: jose.JWTVerifyOptions) {
    this.#resolvers = resolvers;
    this.#options = options;
  }

  /** Imports the keys; throws when a key cannot be read (a setting error). */
  static async create(options: VerifierOptions): Promise<TokenVerifier> {
    const resolvers: Resolver[] = [];
    const secrets = (options.secrets ?? []).map((s) => encoder.encode(s));
    if (secrets.length > 0) {
      resolvers.push((h) => {
        if (h.alg !== "HS256") return Promise.reject(new TokenError("bad-signature", "not HS256"));
        return Promise.resolve(secrets);
      });
    }
    const publics = await Promise.all((options.publicKeys ?? []).map(importPublic));
    if (publics.length > 0) {
      resolvers.push((h) => {
        const keys = publics.filter((p) => p.alg === h.alg).map((p) => p.key);
        if (keys.length === 0) {
          return Promise.reject(new TokenError("bad-signature", "no key for this algorithm"));
        }
        return Promise.resolve(keys);
      });
    }
    if (options.jwksUrl !== undefined && options.jwksUrl !== "") {
      const set = jose.createRemoteJWKSet(new URL(options.jwksUrl), {
        timeoutDuration: options.jwksTimeoutMs ?? 5000,
        cooldownDuration: options.jwksCooldownMs ?? 30_000,
        cacheMaxAge: 10 * 60_000,
      });
      resolvers.push(async (h) => {
        // A JWKS holds public keys only: an HS256 token is not for it (and
        // jose would throw "not supported", which is no outage).
        if (h.alg === "HS256") throw new TokenError("bad-signature", "no JWKS key for HS256");
        try {
          return await set(h) as Key;
        } catch (e) {
          // Several keys fit a token without `kid` (say, during a rotation):
          // jose offers them all, to be tried in turn.
          if ((e as { code?: string }).code !== "ERR_JWKS_MULTIPLE_MATCHING_KEYS") throw e;
          const keys: Key[] = [];
          for await (const k of e as AsyncIterable<Key>) keys.push(k);
          return keys;
        }
      });
    }
    if (resolvers.length === 0) throw new Error("no key to verify tokens with");
    return new TokenVerifier(resolvers, {
      algorithms: [...ALGORITHMS],
      audience: options.audience || undefined,
      issuer: options.issuer || undefined,
      clockTolerance: options.clockSkew ?? 30,
    });
  }

  /** Verifies `token`; resolves with its grant, or rejects with a {@link TokenError}. */
  async verify(token: string | null | undefined): Promise<Grant> {
    if (token === null || token === undefined || token === "") {
      throw new TokenError("missing", "a token is needed");
    }
    if (token.length > 16 * 1024) throw new TokenError("malformed", "the token is too long");
    let header: jose.JWTHeaderParameters;
    try {
      header = jose.decodeProtectedHeader(token) as jose.JWTHeaderParameters;
    } catch {
      throw new TokenError("malformed", "the token is not a well-formed JWT");
    }
    // An algorithm no key is used with (`none`, HS512…) is refused before any
    // key is looked up, so such a token never makes the JWKS be fetched.
    if (!(ALGORITHMS as readonly string[]).includes(header.alg as string)) {
      throw new TokenError("bad-signature", "the token's algorithm is not accepted");
    }
    let last: unknown = new TokenError("bad-signature", "no configured key verifies the token");
    for (const resolve of this.#resolvers) {
      let keys: Key | Key[];
      try {
        keys = await resolve(header);
      } catch (e) {
        last = e;
        if (e instanceof TokenError) continue;
        const code = (e as { code?: string }).code;
        if (code === "ERR_JWKS_NO_MATCHING_KEY" || code === "ERR_JOSE_ALG_NOT_ALLOWED") continue;
        // The JWKS could not be fetched (network, timeout, a bad document).
        throw new TokenError("unavailable", "the token's keys cannot be fetched right now");
      }
      for (const key of Array.isArray(keys) ? keys : [keys]) {
        try {
          const { payload } = await jose.jwtVerify(token, key, this.#options);
          return grantFromClaims(payload as Record<string, unknown>);
        } catch (e) {
          last = e;
          // Another secret may verify it; any other refusal is final.
          if ((e as { code?: string }).code !== "ERR_JWS_SIGNATURE_VERIFICATION_FAILED") {
            throw refusal(e);
          }
        }
      }
    }
    throw refusal(last);
  }
}
