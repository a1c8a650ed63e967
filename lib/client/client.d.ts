/**
 * Types of the client library `client.js` (served at `/client.js`).
 *
 * The WebRTC types here are the structural subset the library uses, so the
 * file type-checks without the DOM library (under Deno) and a browser's
 * `RTCPeerConnection`, or `@roamhq/wrtc`'s, fits them.
 *
 * @module
 */

/** An ICE server entry, as `["ice"]` returns it and `RTCPeerConnection` takes it. */
export interface IceServer {
  /** One URL or several (`stun:`, `turn:`, `turns:`). */
  urls: string | string[];
  /** TURN user name. */
  username?: string;
  /** TURN password. */
  credential?: string;
}

/** The part of `RTCConfiguration` the mesh passes through. */
export interface RtcConfiguration {
  /** ICE servers; when absent the mesh asks the signal server (`["ice"]`). */
  iceServers?: IceServer[];
  /** `"relay"` forces traffic through TURN. */
  iceTransportPolicy?: "all" | "relay";
  /** How media is bundled. */
  bundlePolicy?: "balanced" | "max-bundle" | "max-compat";
  /** Candidates gathered before they are needed. */
  iceCandidatePoolSize?: number;
}

/** A session description as signalled. */
export interface SessionDescription {
  /** `"offer"` or `"answer"` (also `"rollback"` locally). */
  type: "offer" | "answer" | "pranswer" | "rollback";
  /** The SDP text. */
  sdp?: string;
}

/** An ICE candidate as signalled. */
export interface IceCandidateInit {
  /** The `candidate:` line. */
  candidate?: string;
  /** Media line index. */
  sdpMLineIndex?: number | null;
  /** Media id. */
  sdpMid?: string | null;
}

/** What the mesh uses of `RTCDataChannel`. */
export interface DataChannelLike {
  /** The channel's label. */
  readonly label: string;
  /** `"connecting" | "open" | "closing" | "closed"`. */
  readonly readyState: string;
  /** Sends a message. */
  send(data: string | ArrayBuffer | ArrayBufferView): void;
  /** Closes the channel. */
  close(): void;
}

/** What the mesh uses of `RTCPeerConnection`. */
export interface PeerConnectionLike {
  /** `"new" | "connecting" | "connected" | "disconnected" | "failed" | "closed"`. */
  readonly connectionState: string;
  /** `"stable" | "have-local-offer" | … | "closed"`. */
  readonly signalingState: string;
  /** `"new" | "checking" | "connected" | … | "closed"`. */
  readonly iceConnectionState: string;
  /** Closes the connection. */
  close(): void;
}

/** A constructor of peer connections (the browser's, or `@roamhq/wrtc`'s). */
export type PeerConnectionConstructor = new (config?: RtcConfiguration) => PeerConnectionLike;

/** A minimal typed event emitter; `M` maps event names to payloads. */
export declare class Emitter<M> {
  /** Calls `listener` for every event of `type`; returns a function that removes it. */
  on<K extends keyof M & string>(type: K, listener: (event: M[K]) => void): () => void;
  /** Removes a listener added with {@link Emitter.on}. */
  off<K extends keyof M & string>(type: K, listener: (event: M[K]) => void): void;
  /** The next event of `type` that passes `filter`; rejects after `timeout` ms when given. */
  once<K extends keyof M & string>(
    type: K,
    filter?: (event: M[K]) => boolean,
    timeout?: number,
  ): Promise<M[K]>;
  /** Calls every listener of `type` with `event`. */
  emit<K extends keyof M & string>(type: K, event: M[K]): void;
}

/** A request the server refused with `["error", call, code, detail]`. */
export declare class SignalError extends Error {
  /** Builds the error from the server's reply. */
  constructor(call: string, code: string, detail: string);
  /** The call that failed (or `"frame"`). */
  readonly call: string;
  /** The protocol error code, e.g. `"ident-taken"`. */
  readonly code: string;
  /** The server's explanation. */
  readonly detail: string;
}

/** Events of a {@link SignalClient}. */
export interface SignalEvents {
  /** The socket opened; `reconnected` after a drop. */
  open: { reconnected: boolean };
  /** The socket closed; `reconnecting` tells whether a new attempt follows after `delay` ms. */
  close: { code: number; reason: string; reconnecting: boolean; delay: number };
  /** A global ident was claimed (also after a reconnect's re-join). */
  join: { global: string; room: string; ident: string };
  /** A global ident was given up (by `leave`, or a re-join that failed for good). */
  leave: { global: string };
  /** A new pair: `local` (ours) should connect to `remote`; `initiator` makes the offer. */
  stun: { local: string; remote: string; initiator: boolean };
  /** `remote` sent `data` to our `local`. */
  signal: { local: string; remote: string; data: unknown };
  /** `remote` left the room of our `local`. */
  bye: { local: string; remote: string };
  /**
   * The server refused a call. Besides the protocol's codes, the client
   * reports `{call: "auth", code: "no-token"}` when the token function
   * failed, `{call: "auth", code: "bad-token"}` when a token cannot be sent
   * as a subprotocol, and `{call: "prove", code: "no-key"}` when the key
   * pair cannot be used.
   */
  error: { call: string; code: string; detail: string };
  /** The server accepted a token sent with `["auth", token]`: its subject and expiry (Unix seconds). */
  auth: { sub: string; exp: number | null };
  /** The server accepted a proof of `ident` on this connection. */
  prove: { ident: string };
  /**
   * The server granted a resumable session (`resumable: true`), or there is
   * none (any more): the server has no sessions (`detail` holds its
   * `unknown-call` or `unavailable`), a resume was refused (the client then
   * joins its rooms again), or another connection resumed it (close 4001).
   * The session's token is never part of an event.
   */
  session: { resumable: boolean; detail: string };
  /**
   * After a reconnect the session was resumed: the client holds `idents`
   * (global idents, as the server listed them) on the new socket with no
   * re-join, and peers saw no `bye` and no new `stun`. Frames kept for it
   * follow as usual (`signal` events…), then the signals made while away go
   * out. `missed` counts frames sent to the old socket that the server could
   * no longer re-send (0 unless the old socket stayed dead, unnoticed, for
   * longer than the server's grace).
   */
  resume: { idents: string[]; missed: number };
}

/** Backoff of reconnect attempts: `min(maxDelay, initialDelay·factorⁿ)`, less up to `jitter` of it. */
export interface ReconnectOptions {
  /** First delay in ms (default 250). */
  initialDelay?: number;
  /** Largest delay in ms (default 15000). */
  maxDelay?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
  /** Fraction of the delay taken off at random, 0–1 (default 0.5). */
  jitter?: number;
}

/**
 * A bearer token (a JWT from the application's backend), or a function that
 * gets a fresh one. The function is called before every connection attempt
 * and again before the token in force expires.
 */
export type TokenSource = string | (() => string | Promise<string>);

/** Options of a {@link SignalClient}. */
export interface SignalClientOptions {
  /**
   * The token to present. A function is called for a fresh token on every
   * (re)connect and `refreshBefore` ms before the token expires, which is
   * then sent as `["auth", token]` on the open socket. A fixed string is
   * never refreshed: once the server closes with 1008 "token expired", the
   * client stops.
   */
  token?: TokenSource;
  /**
   * Where the token goes when a socket opens: `"protocol"` (default) offers
   * the subprotocols `["jwt", token]`, which keeps it out of URLs (and so
   * out of proxy and server access logs); `"query"` adds `?token=` to the
   * URL; `"auth"` sends `["auth", token]` as the first frame (only for
   * servers that do not require a token at the upgrade).
   */
  tokenIn?: "protocol" | "query" | "auth";
  /**
   * Milliseconds before expiry at which a fresh token is sent (default
   * 60000; never more than half the time the token has left).
   */
  refreshBefore?: number;
  /**
   * An Ed25519 key pair whose public key is this client's key ident, or
   * `true` to make one. Joining with {@link SignalClient.keyIdent} proves it
   * first (`["challenge"]`, `["prove", ident, signature]`), on every new
   * connection.
   */
  keyPair?: CryptoKeyPair | true;
  /**
   * Ask the server for a resumable session (default `true`): after a drop,
   * the client sends `["resume", token]` first on the new socket and keeps
   * every ident without a re-join; peers see nothing. A server without
   * sessions (it answers `unknown-call` or `unavailable`) is used as before,
   * and a refused resume falls back to joining again. `false` never asks.
   * Since the server keeps a session's idents for its grace however the
   * socket closed, {@link SignalClient.close} and, in a browser, the page's
   * `pagehide` leave them first, so peers get their `bye` at once.
   */
  session?: boolean;
  /** `false` to never reconnect; else the backoff. */
  reconnect?: ReconnectOptions | false;
  /** Milliseconds a request waits for its reply (default 10000). */
  requestTimeout?: number;
  /** Milliseconds between liveness pings, 0 for none (default 30000). */
  heartbeat?: number;
  /** The WebSocket constructor (default: the global one). */
  WebSocket?: typeof WebSocket;
}

/** One connection to a signal server. Starts connecting at once. */
export declare class SignalClient extends Emitter<SignalEvents> {
  /**
   * Connects to `url` (`ws:`/`wss:`, or `http:`/`https:` mapped to them);
   * without one, to the server that served `client.js`.
   */
  constructor(url?: string | URL, options?: SignalClientOptions);
  /** The server's WebSocket URL. */
  readonly url: string;
  /** Where the connection stands. */
  readonly state: "connecting" | "open" | "reconnecting" | "closed";
  /** The global idents held, in join order. */
  readonly joined: string[];
  /**
   * The key ident (43 base64url characters of the Ed25519 public key), when
   * a key pair was given or made; known once {@link SignalClient.opened}
   * resolves.
   */
  readonly keyIdent: string | undefined;
  /** Unix seconds at which the token in force expires, when known. */
  readonly tokenExpiry: number | undefined;
  /** Whether a resumable session is held: after a drop the client would resume it. */
  readonly resumable: boolean;
  /** Makes an Ed25519 key pair for a key ident (private key not extractable). */
  static generateKeyPair(): Promise<CryptoKeyPair>;
  /** The key ident of an Ed25519 public key. */
  static keyIdentOf(publicKey: CryptoKey): Promise<string>;
  /** Resolves once the socket is open. */
  opened(): Promise<void>;
  /** Asks the server for a fresh ident. */
  ident(): Promise<string>;
  /**
   * Joins `room` as `ident` (a fresh one if omitted); resolves with
   * `room:ident`. Joining as {@link SignalClient.keyIdent} proves it first.
   */
  join(room: string, ident?: string): Promise<string>;
  /**
   * Sends `["auth", token]` on the open socket (`token`, or a fresh one
   * from the token function); resolves with the subject and expiry the
   * server read. The client refreshes by itself; this hands over a new
   * grant at once.
   */
  auth(token?: string): Promise<{ sub: string; exp: number | null }>;
  /** Proves the key ident on the current connection (`join` does it by itself). */
  prove(): Promise<void>;
  /** Leaves the room of the global ident `global`. */
  leave(global: string): Promise<void>;
  /**
   * Relays `data` from our `from` to the peer `to`. While a session's socket
   * is down, signals are kept (up to 256) and sent once it resumes (dropped
   * if it cannot be); false when the signal can be neither sent nor kept.
   */
  signal(from: string, to: string, data: unknown): boolean;
  /** Asks for ICE servers (STUN, and TURN with fresh credentials). */
  ice(): Promise<IceServer[]>;
  /** One round trip to the server. */
  ping(): Promise<void>;
  /**
   * Closes for good (no reconnect); resolves once the socket has closed.
   * With a session, every held ident is left first, so peers get their
   * `bye` at once rather than after the server's grace.
   */
  close(): Promise<void>;
}

/** Why a peer went away. */
export type PeerCloseReason =
  | "bye"
  | "replaced"
  | "left"
  | "closed"
  | "failed"
  | "channel-closed";

/** Events of a {@link Mesh}. */
export interface MeshEvents {
  /** A peer connection was made for `peer`. */
  peer: { peer: string; initiator: boolean; connection: PeerConnectionLike };
  /** The connection state of `peer` changed. */
  state: { peer: string; state: string };
  /** The data channel to `peer` opened. */
  open: { peer: string };
  /** A message from `peer` (a string, or an ArrayBuffer for binary). */
  message: { peer: string; data: string | ArrayBuffer };
  /** The connection to `peer` was closed and forgotten. */
  close: { peer: string; reason: PeerCloseReason };
  /** Negotiation with `peer` failed. */
  error: { peer: string; error: unknown };
}

/** Options of a {@link Mesh}. */
export interface MeshOptions {
  /** Passed to every `RTCPeerConnection`; without `iceServers` the signal server's are used. */
  rtcConfig?: RtcConfiguration;
  /** The `RTCPeerConnection` constructor (default: the global one). */
  RTCPeerConnection?: PeerConnectionConstructor;
  /** Label of the data channel the initiator opens (default `"diva"`). */
  channelLabel?: string;
}

/**
 * A full mesh of WebRTC data channels among the members of one room. Pairs
 * outlive a drop of the signal socket: only `bye`, a failed or closed peer
 * connection, a closed channel, `leave()` or `close()` end one. With a
 * resumed session they simply go on; after a re-join (no session, or the
 * resume refused) each pair is announced again and replaced.
 */
export declare class Mesh extends Emitter<MeshEvents> {
  /** A mesh that negotiates through `client`. */
  constructor(client: SignalClient, options?: MeshOptions);
  /** Our global ident in the room, once joined. */
  readonly self: string | undefined;
  /** How many peer connections exist (connecting or open). */
  readonly peers: number;
  /** The global idents of the peers. */
  peerIds(): string[];
  /** The peer connection to `peer`, if any. */
  connection(peer: string): PeerConnectionLike | undefined;
  /** Whether the data channel to `peer` is open. */
  isOpen(peer: string): boolean;
  /** Joins `room` as `ident` (or a fresh ident) and connects to every member. */
  join(room: string, ident?: string): Promise<string>;
  /** Leaves the room and closes every peer connection. */
  leave(): Promise<void>;
  /** Sends to `peer`; false if its channel is not open. */
  send(peer: string, data: string | ArrayBuffer | ArrayBufferView): boolean;
  /** Sends to every open peer; returns how many. */
  broadcast(data: string | ArrayBuffer | ArrayBufferView): number;
  /** Closes every peer connection and detaches from the client. */
  close(): void;
}

/** The claims of a JWT, decoded without verifying it, or undefined when it is not one. */
export declare function tokenClaims(token: string): Record<string, unknown> | undefined;

/** Makes an Ed25519 key pair for a key ident (public key exportable, private key not). */
export declare function generateKeyPair(): Promise<CryptoKeyPair>;

/** The key ident of an Ed25519 public key: its raw bytes in unpadded base64url (43 characters). */
export declare function keyIdentOf(publicKey: CryptoKey): Promise<string>;

/**
 * The base64url signature that proves `ident` for `challenge`: Ed25519 over
 * `"diva-ident-proof\n" + challenge + "\n" + ident`.
 */
export declare function signProof(
  privateKey: CryptoKey,
  challenge: string,
  ident: string,
): Promise<string>;
