import { clone } from "@bufbuild/protobuf";
import { type BackoffOptions, type Sleep, backoffDelayMs, sleep as realSleep } from "./backoff.js";
import { Code, DualstreamError, toDualstreamError } from "./errors.js";
import { type SubscribeRequest, SubscribeRequestSchema, type SubscribeResponse } from "./gen/dualstream/v1/event_service_pb.js";
import { type StreamMessage, streamMessagesFromProto } from "./messages.js";

/** Opens one Subscribe call; aborting `signal` cancels it. */
export type OpenStream = (request: SubscribeRequest, signal: AbortSignal) => AsyncIterable<SubscribeResponse>;

/** How a subscription reconnects after its stream breaks. */
export interface ReconnectOptions extends BackoffOptions {
  /**
   * How many connections in a row may fail before the subscription gives up and throws the
   * last error. A connection that reached `subscribed` resets the count. Default: no limit,
   * a subscription outlives any outage of the sidecar.
   */
  maxAttempts?: number;
  /**
   * How long reconnecting may go on failing, from the first failure, before the subscription
   * gives up with the last error. A connection that reached `subscribed` starts it over.
   * Default 300,000 ms (5 minutes, as in the Go and Python clients).
   */
  maxElapsedMs?: number;
  /** Called before each wait to reconnect; for logging. It must not throw. */
  onReconnect?: (info: { error: DualstreamError; attempt: number; delayMs: number }) => void;
}

/** What the stream knows, shared with the `Subscription` that shows it. */
export interface ResumeState {
  /** The cursor of the last message handed to the application: where a resume starts. */
  cursor: string;
  /** Connections that reached `subscribed`. */
  connections: number;
  /** The error that broke the last connection, if one did. */
  lastError: DualstreamError | undefined;
}

// The sidecar's answers that a new connection would only repeat: bad input, no access, a
// limit. Everything else (UNAVAILABLE, a connection that dropped, a sidecar that died
// mid-stream) is the outage that resuming exists for.
const FINAL_CODES = new Set<Code>([
  Code.InvalidArgument,
  Code.Unauthenticated,
  Code.PermissionDenied,
  Code.ResourceExhausted,
  Code.Unimplemented,
  Code.FailedPrecondition,
  Code.NotFound,
  Code.AlreadyExists,
  Code.OutOfRange,
]);

export function isResumable(error: DualstreamError): boolean {
  return !FINAL_CODES.has(error.code);
}

export interface ResumingStreamOptions {
  /** False: the first break ends the stream (an error throws, a clean end returns). */
  resume?: boolean;
  reconnect?: ReconnectOptions;
  signal?: AbortSignal | undefined;
  state?: ResumeState;
  sleep?: Sleep;
  random?: () => number;
  now?: () => number;
}

/**
 * Follow a subscription across broken streams. Each connection's messages are translated and
 * handed over one at a time; the cursor of each is kept the moment it is handed over, so when
 * the stream breaks, the next connection resumes exactly after the last message the
 * application received: nothing is lost or repeated, and each source stays in order (the
 * sidecar's resume contract). A `NotificationBatch` is unpacked into its notifications, each
 * with its own cursor. Gaps are handed over like anything else. Ends quietly when `signal`
 * aborts; throws a `DualstreamError` for an answer a retry would only repeat, or when
 * `maxAttempts` connections in a row failed, or reconnecting failed for `maxElapsedMs`.
 */
export async function* resumingStream(
  open: OpenStream,
  request: SubscribeRequest,
  options: ResumingStreamOptions = {},
): AsyncGenerator<StreamMessage, void, undefined> {
  const { reconnect = {}, signal } = options;
  const state = options.state ?? { cursor: "", connections: 0, lastError: undefined };
  const sleep = options.sleep ?? realSleep;
  const now = options.now ?? (() => performance.now());
  const maxAttempts = reconnect.maxAttempts ?? Number.POSITIVE_INFINITY;
  const maxElapsedMs = reconnect.maxElapsedMs ?? 300_000;
  let failures = 0;
  let failingSince = 0;
  while (!signal?.aborted) {
    const attempt = new AbortController();
    const stopAttempt = (): void => attempt.abort();
    signal?.addEventListener("abort", stopAttempt, { once: true });
    let error: DualstreamError;
    try {
      for await (const response of open(requestFrom(request, state.cursor), attempt.signal)) {
        for (const message of streamMessagesFromProto(response, state.connections > 0)) {
          if (message.kind === "subscribed") {
            failures = 0;
            state.connections += 1;
          }
          state.cursor = message.cursor;
          yield message;
        }
      }
      if (options.resume === false) {
        return;
      }
      error = new DualstreamError(Code.Unavailable, "the sidecar ended the stream");
    } catch (thrown) {
      if (signal?.aborted) {
        return;
      }
      error = toDualstreamError(thrown);
      if (options.resume === false || !isResumable(error)) {
        throw error;
      }
    } finally {
      signal?.removeEventListener("abort", stopAttempt);
      attempt.abort();
    }
    state.lastError = error;
    failures += 1;
    if (failures === 1) {
      failingSince = now();
    }
    const delayMs = backoffDelayMs(failures - 1, reconnect, options.random);
    if (failures >= maxAttempts || now() + delayMs - failingSince > maxElapsedMs) {
      throw error;
    }
    reconnect.onReconnect?.({ error, attempt: failures, delayMs });
    await sleep(delayMs, signal);
  }
}

/** The request for the next connection: after the first message, resume from the cursor. */
function requestFrom(request: SubscribeRequest, cursor: string): SubscribeRequest {
  if (cursor === "") {
    return request;
  }
  const resumed = clone(SubscribeRequestSchema, request);
  resumed.resumeCursor = cursor;
  resumed.start = undefined;
  return resumed;
}
