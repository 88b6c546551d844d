import { fromBinary } from "@bufbuild/protobuf";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { DurationSchema, durationMs } from "@bufbuild/protobuf/wkt";
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
  /**
   * The sidecar's retry hint, in ms, on a `RESOURCE_EXHAUSTED` that refused a publish as past
   * its capacity (nothing was written: retrying after it with the same ids is safe), or the
   * client's own when `throttled`. `undefined` on every other error, including the
   * `RESOURCE_EXHAUSTED`s a retry would only repeat (a request over the size limit, too many
   * streams).
   */
  readonly retryAfterMs: number | undefined;
  /**
   * True when the client's adaptive throttle refused the call without sending it, because the
   * sidecar has been refusing this client's calls as past capacity (`ClientOptions.throttle`).
   */
  readonly throttled: boolean;

  constructor(
    code: Code,
    details: string,
    options?: { cause?: unknown; retryAfterMs?: number | undefined; throttled?: boolean },
  ) {
    super(`${codeName(code)}: ${details}`, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = details;
    this.field = code === Code.InvalidArgument ? fieldPath(details) : undefined;
    this.retryAfterMs = options?.retryAfterMs;
    this.throttled = options?.throttled ?? false;
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

/**
 * A publish refused as past capacity, by the sidecar or by the client's throttle: nothing was
 * written, so it is retried (after the hint) like UNAVAILABLE.
 */
export function isCapacityRefusal(error: DualstreamError): boolean {
  return error.code === Code.ResourceExhausted && error.retryAfterMs !== undefined;
}

const RETRY_INFO = "google.rpc.RetryInfo";
const RETRY_PUSHBACK = "grpc-retry-pushback-ms";

/**
 * The retry hint of a refusal, in ms: the `google.rpc.RetryInfo` detail of the rich error
 * model, else gRPC's `grpc-retry-pushback-ms` trailer (a whole number; gRPC reads anything
 * else, a negative number included, as "do not retry", so it is no hint).
 */
export function retryHintMs(error: ConnectError): number | undefined {
  for (const detail of error.details) {
    if ("type" in detail && detail.type === RETRY_INFO) {
      const delayMs = retryInfoDelayMs(detail.value);
      if (delayMs !== undefined) {
        return delayMs;
      }
    }
  }
  const pushback = error.metadata.get(RETRY_PUSHBACK)?.trim();
  return pushback !== undefined && /^\d+$/.test(pushback) ? Number(pushback) : undefined;
}

// RetryInfo is one field, `google.protobuf.Duration retry_delay = 1`: read by hand, so the
// client does not generate and ship googleapis' error_details.proto for it.
function retryInfoDelayMs(bytes: Uint8Array): number | undefined {
  try {
    const reader = new BinaryReader(bytes);
    let delayMs: number | undefined;
    while (reader.pos < reader.len) {
      const [fieldNo, wireType] = reader.tag();
      if (fieldNo === 1 && wireType === WireType.LengthDelimited) {
        delayMs = durationMs(fromBinary(DurationSchema, reader.bytes()));
      } else {
        reader.skip(wireType, fieldNo);
      }
    }
    return delayMs !== undefined && Number.isFinite(delayMs) && delayMs >= 0 ? delayMs : undefined;
  } catch {
    return undefined; // a malformed detail is no hint; the pushback trailer may still be one
  }
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
  const retryAfterMs = code === Code.ResourceExhausted ? retryHintMs(connectError) : undefined;
  return new DualstreamError(code, connectError.rawMessage, { cause: error, retryAfterMs });
}
