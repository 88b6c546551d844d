import { Code, ConnectError } from "@connectrpc/connect";

export { Code };

/**
 * A failed call. `code` is the gRPC status code (connect's `Code` enum has the same numbers),
 * `details` the sidecar's own explanation, and `field` the request path of the offending field
 * when the sidecar rejected the input (`INVALID_ARGUMENT`), for example
 * `events[1].source_type`.
 */
export class DualstreamError extends Error {
  override readonly name = "DualstreamError";
  readonly code: Code;
  readonly details: string;
  readonly field: string | undefined;

  constructor(code: Code, details: string, options?: { cause?: unknown }) {
    super(`${codeName(code)}: ${details}`, options);
    this.code = code;
    this.details = details;
    this.field = code === Code.InvalidArgument ? fieldPath(details) : undefined;
  }

  /** The code as gRPC spells it, for example `INVALID_ARGUMENT`. */
  get codeName(): string {
    return codeName(this.code);
  }
}

/** `Code.InvalidArgument` → `INVALID_ARGUMENT`. */
export function codeName(code: Code): string {
  const name = Code[code] as string | undefined;
  if (name === undefined) {
    return `CODE_${code}`;
  }
  return name === "Canceled" ? "CANCELLED" : name.replace(/(?<=[a-z])(?=[A-Z])/g, "_").toUpperCase();
}

// The sidecar starts every INVALID_ARGUMENT message with the field's request path:
// `event.type: is required`, `events[3].source_type: contains ':'`,
// `events[0].attributes['Bad']: names must be ...`.
const FIELD_PATH =
  /^([A-Za-z_]\w*(?:\[(?:\d+|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\]|\.[A-Za-z_]\w*)*): /;

/** The request path at the start of a sidecar's INVALID_ARGUMENT message, if it has one. */
export function fieldPath(details: string): string | undefined {
  return FIELD_PATH.exec(details)?.[1];
}

// Node error codes that mean the connection itself went away under a call. connect reports
// some of them as ABORTED; the sidecar never sends ABORTED, so to a caller they are what
// gRPC calls UNAVAILABLE: the call may or may not have reached the sidecar, retry it.
const CONNECTION_LOST = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "EPIPE",
  "ENOENT", // a unix socket whose sidecar is not (yet) listening
  "ERR_STREAM_DESTROYED",
  "ERR_HTTP2_INVALID_STREAM",
  "ERR_HTTP2_STREAM_CANCEL",
  "ERR_HTTP2_GOAWAY_SESSION",
  "ERR_HTTP2_SESSION_ERROR",
  "ERR_HTTP2_STREAM_ERROR",
]);

// How connect words an HTTP/2 RST_STREAM it did not ask for.
const STREAM_RESET_BY_TRANSPORT = "http/2 stream closed with error code";

function lostConnection(error: unknown): boolean {
  const seen = new Set<unknown>();
  for (let link = error; link instanceof Error && !seen.has(link); link = link.cause) {
    seen.add(link);
    const code = (link as { code?: unknown }).code;
    if (typeof code === "string" && CONNECTION_LOST.has(code)) {
      return true;
    }
  }
  return false;
}

/** Translate anything a call threw into a `DualstreamError`, keeping the original as `cause`. */
export function toDualstreamError(error: unknown): DualstreamError {
  if (error instanceof DualstreamError) {
    return error;
  }
  const connectError = ConnectError.from(error);
  let code = connectError.code;
  if ((code === Code.Aborted || code === Code.Internal || code === Code.Unknown) && lostConnection(error)) {
    code = Code.Unavailable;
  } else if (code === Code.Canceled && connectError.rawMessage.startsWith(STREAM_RESET_BY_TRANSPORT)) {
    // The HTTP/2 stream was closed under the call, not by the caller (whose abort reports
    // itself as such): the connection to the sidecar died, e.g. the sidecar was killed.
    code = Code.Unavailable;
  }
  return new DualstreamError(code, connectError.rawMessage, { cause: error });
}
