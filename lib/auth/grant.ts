/**
 * What a verified token grants: the rooms its bearer may join, the idents it
 * may claim, whether it may have TURN credentials, and limits of its own.
 * Pure: a grant is made from a token's claims and checked by the engines.
 *
 * The claims, beside the registered ones (`sub`, `exp`, `nbf`, `aud`,
 * `iss`):
 *
 * | claim    | type               | meaning                                                   |
 * | -------- | ------------------ | --------------------------------------------------------- |
 * | `rooms`  | string[]           | rooms (DIVA), topics (y-webrtc) it may join; `*` patterns |
 * | `idents` | string[]           | idents (DIVA), ids (PeerJS) it may claim; `*` patterns    |
 * | `turn`   | boolean            | it may have TURN credentials from `["ice"]`               |
 * | `limits` | object             | `maxIdentsPerConnection`, `rate`, `burst` of its own      |
 *
 * A missing `rooms` grants no protected room; a missing `idents` leaves
 * idents unrestricted; a missing `turn` is false.
 *
 * @module
 */

import { matcher } from "./patterns.ts";

/** The per-connection limits a grant may set for its bearer. */
export const GRANT_LIMITS = ["maxIdentsPerConnection", "rate", "burst"] as const;

/** One of {@link GRANT_LIMITS}. */
export type GrantLimit = typeof GRANT_LIMITS[number];

/** What a verified token allows. */
export interface Grant {
  /** The token's subject (`sub`), or "" when it has none. */
  readonly subject: string;
  /** When the token expires, in Unix milliseconds (Infinity without `exp`). */
  readonly expiresAt: number;
  /** True when the bearer may join `room` where joining needs a grant. */
  readonly room: (room: string) => boolean;
  /** True when the bearer may claim `ident`. */
  readonly ident: (ident: string) => boolean;
  /** True when the bearer may have TURN credentials. */
  readonly turn: boolean;
  /** Limits of the bearer's own, overriding the server's. */
  readonly limits: Readonly<Partial<Record<GrantLimit, number>>>;
}

/** A token whose claims do not make a grant; the message says which claim. */
export class GrantError extends Error {
  /** Names the error class in messages. */
  override name = "GrantError";
}

function names(claims: Record<string, unknown>, key: string): string[] | undefined {
  const v = claims[key];
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || !v.every((x) => typeof x === "string" && x.length <= 512)) {
    throw new GrantError(`claim ${key} must be an array of names`);
  }
  if (v.length > 1024) throw new GrantError(`claim ${key} has more than 1024 entries`);
  return v as string[];
}

/**
 * Makes a grant from a verified token's claims; throws {@link GrantError}
 * when a grant claim has the wrong shape.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const g = grantFromClaims({ sub: "u1", exp: 2_000_000_000, rooms: ["team-*"], turn: true });
 * assert.equal(g.subject, "u1");
 * assert.equal(g.expiresAt, 2_000_000_000_000);
 * assert.equal(g.room("team-red"), true);
 * assert.equal(g.room("lobby"), false);
 * assert.equal(g.ident("anyone"), true); // no idents claim: idents are not restricted
 * assert.equal(g.turn, true);
 * ```
 */
export function grantFromClaims(claims: Record<string, unknown>): Grant {
  const rooms = names(claims, "rooms") ?? [];
  const idents = names(claims, "idents");
  const turn = claims.turn;
  if (turn !== undefined && typeof turn !== "boolean") {
    throw new GrantError("claim turn must be true or false");
  }
  const limits: Partial<Record<GrantLimit, number>> = {};
  const raw = claims.limits;
  if (raw !== undefined) {
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
      throw new GrantError("claim limits must be an object");
    }
    for (const [k, v] of Object.entries(raw)) {
      if (!(GRANT_LIMITS as readonly string[]).includes(k)) {
        throw new GrantError(`claim limits.${k} is not a limit a token may set`);
      }
      if (!Number.isSafeInteger(v) || (v as number) < 0) {
        throw new GrantError(`claim limits.${k} must be a whole number`);
      }
      limits[k as GrantLimit] = v as number;
    }
  }
  const sub = typeof claims.sub === "string" ? claims.sub : "";
  const exp = typeof claims.exp === "number" ? claims.exp * 1000 : Infinity;
  return {
    subject: sub,
    expiresAt: exp,
    room: matcher(rooms),
    ident: idents === undefined ? () => true : matcher(idents),
    turn: turn === true,
    limits,
  };
}
