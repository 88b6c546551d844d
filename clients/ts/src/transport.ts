import * as net from "node:net";
import type { Interceptor, Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

/** TLS to the sidecar. `ca` (PEM) replaces the system's roots; `cert` + `key` for mutual TLS. */
export interface TlsOptions {
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
  /** The name to check the certificate against, when it is not the target's host. */
  serverName?: string;
}

export interface TransportOptions {
  /** `host:port`, `[v6]:port` or `unix:/path/to.sock` (also `unix:///path`). */
  target: string;
  /** Sent as `authorization: Bearer <token>` on every call. */
  token?: string | undefined;
  /** `true` for TLS with the system's roots, or the options; unset means plaintext. */
  tls?: TlsOptions | boolean | undefined;
  /** HTTP/2 PINGs at this interval notice a silent sidecar on a quiet stream. Default off. */
  keepaliveIntervalMs?: number | undefined;
  interceptors?: Interceptor[] | undefined;
}

/** One HTTP/2 connection to the sidecar (reopened as needed) and the gRPC protocol over it. */
export interface Connection {
  transport: Transport;
  close(): void;
}

export function parseTarget(target: string): { baseUrl: string; socketPath: string | undefined } {
  if (target.startsWith("unix:")) {
    const socketPath = target.slice("unix:".length).replace(/^\/\/(?=\/)/, "");
    if (socketPath === "") {
      throw new TypeError(`target ${JSON.stringify(target)} names no socket path`);
    }
    return { baseUrl: "http://localhost", socketPath };
  }
  if (!/^(\[[0-9A-Fa-f:.]+\]|[^\s:/[\]]+):\d+$/.test(target)) {
    throw new TypeError(
      `target ${JSON.stringify(target)} is neither host:port, [v6 address]:port nor unix:/path`,
    );
  }
  return { baseUrl: `http://${target}`, socketPath: undefined };
}

export function openConnection(options: TransportOptions): Connection {
  const { baseUrl, socketPath } = parseTarget(options.target);
  const tls = options.tls === true ? {} : options.tls || undefined;
  if (tls !== undefined && socketPath !== undefined) {
    throw new TypeError("TLS over a unix socket is not supported: the socket is local already");
  }
  const url = tls === undefined ? baseUrl : baseUrl.replace(/^http:/, "https:");
  const sessionOptions =
    tls !== undefined
      ? {
          ...(tls.ca === undefined ? {} : { ca: tls.ca }),
          ...(tls.cert === undefined ? {} : { cert: tls.cert }),
          ...(tls.key === undefined ? {} : { key: tls.key }),
          ...(tls.serverName === undefined ? {} : { servername: tls.serverName }),
        }
      : socketPath !== undefined
        ? { createConnection: () => net.connect(socketPath) }
        : {};
  const keepalive =
    options.keepaliveIntervalMs === undefined ? {} : { pingIntervalMs: options.keepaliveIntervalMs };
  const sessionManager = new Http2SessionManager(url, keepalive, sessionOptions);
  const interceptors = [...(options.interceptors ?? [])];
  if (options.token) {
    const authorization = `Bearer ${options.token}`;
    interceptors.unshift((next) => (request) => {
      request.header.set("authorization", authorization);
      return next(request);
    });
  }
  const transport = createGrpcTransport({ baseUrl: url, sessionManager, interceptors });
  return { transport, close: () => sessionManager.abort() };
}
