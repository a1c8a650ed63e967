/**
 * `upgradeWebSocket`, shaped like `Deno.upgradeWebSocket`: called by a
 * handler with a request this transport made, it returns the socket and the
 * 101 response to return. The connection switches once the handler returns
 * that response.
 *
 * @module
 */

import { headerEntries } from "./http_response.ts";
import { acceptKey, checkUpgrade } from "./ws_handshake.ts";
import { OwnWebSocket, type SocketOptions } from "./websocket.ts";

/** What the transport records about each request it hands to a handler. */
export interface RequestOrigin {
  /** The HTTP minor version of the request (upgrades need 1). */
  minor: 0 | 1;
  /** Defaults for every socket of this server, under the handler's options. */
  socketDefaults: SocketOptions;
  /** The socket `upgradeWebSocket` made for the request, once it was called. */
  socket?: OwnWebSocket;
}

/**
 * The 101 answer. `Response` refuses 101 in its constructor; this one is only
 * ever read by the transport and by the application, so its class says 101
 * (a getter on the class, not a property defined on each object). Its fields
 * stay a plain list until the application asks for `headers`, and the
 * transport writes the list as it is unless the application did: a
 * `Headers` made and read back for every upgrade costs more than the rest
 * of the answer.
 */
class SwitchingProtocols extends Response {
  readonly #fields: [string, string][];
  #headers: Headers | undefined;

  constructor(fields: [string, string][]) {
    super(null, { status: 200 });
    this.#fields = fields;
  }

  override get status(): number {
    return 101;
  }

  override get statusText(): string {
    return "Switching Protocols";
  }

  override get headers(): Headers {
    this.#headers ??= new Headers(this.#fields);
    return this.#headers;
  }

  /** The fields to send: the list, or what the application made of `headers`. */
  fields(): [string, string][] {
    return this.#headers === undefined ? this.#fields : headerEntries(this.#headers);
  }
}

/** The fields of a response the transport sends, `set-cookie` lines kept apart. */
export function responseFields(response: Response): [string, string][] {
  return response instanceof SwitchingProtocols
    ? response.fields()
    : headerEntries(response.headers);
}

const origins = new WeakMap<Request, RequestOrigin>();
const upgrades = new WeakMap<Response, { request: Request; socket: OwnWebSocket }>();

/** Marks `request` as made by this transport (only those can be upgraded). */
export function registerRequest(request: Request, origin: RequestOrigin): void {
  origins.set(request, origin);
}

/**
 * The socket whose 101 `response` answers `request`, if the handler returned
 * what `upgradeWebSocket` gave it for that request.
 */
export function upgradeFor(request: Request, response: Response): OwnWebSocket | undefined {
  const u = upgrades.get(response);
  return u !== undefined && u.request === request ? u.socket : undefined;
}

/**
 * Thrown by {@link upgradeWebSocket} for a request that is not a valid
 * upgrade. If it escapes the handler, the transport answers with `status`
 * (400, or 426 with `Sec-WebSocket-Version: 13`) instead of a 500.
 */
export class UpgradeError extends TypeError {
  /** The status to answer with. */
  readonly status: 400 | 426;
  /** Fields to send with it. */
  readonly headers: readonly [string, string][];

  /** An error answering `status` with `headers`. */
  constructor(message: string, status: 400 | 426, headers: readonly [string, string][] = []) {
    super(message);
    this.name = "UpgradeError";
    this.status = status;
    this.headers = headers;
  }

  /** The answer to send. */
  response(): Response {
    return new Response(`${this.message}\n`, {
      status: this.status,
      headers: [["content-type", "text/plain; charset=utf-8"], ...this.headers],
    });
  }
}

/** What {@link upgradeWebSocket} returns, as `Deno.upgradeWebSocket` does. */
export interface WebSocketUpgrade {
  /** The socket, CONNECTING until the response is sent. */
  socket: OwnWebSocket;
  /** The 101 response the handler must return. */
  response: Response;
}

/**
 * Upgrades `request` to a WebSocket. Throws {@link UpgradeError} for an
 * invalid upgrade request, and a TypeError when `request` did not come from
 * this transport or `options.protocol` was not offered by the client.
 */
export function upgradeWebSocket(request: Request, options: SocketOptions = {}): WebSocketUpgrade {
  const origin = origins.get(request);
  if (origin === undefined) throw new TypeError("the request did not come from this transport");
  if (origin.socket !== undefined) throw new TypeError("the request was upgraded already");
  const check = checkUpgrade(request.method, request.headers, origin.minor);
  if ("status" in check) throw new UpgradeError(check.reason, check.status, check.headers);
  if (options.protocol !== undefined && !check.protocols.includes(options.protocol)) {
    throw new TypeError("the protocol was not offered by the client");
  }
  const socket = new OwnWebSocket({ ...origin.socketDefaults, ...options });
  const headers: [string, string][] = [["sec-websocket-accept", acceptKey(check.key)]];
  if (options.protocol !== undefined) headers.push(["sec-websocket-protocol", options.protocol]);
  const response = new SwitchingProtocols(headers);
  upgrades.set(response, { request, socket });
  origin.socket = socket;
  return { socket, response };
}
