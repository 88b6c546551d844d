import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type CallOptions as ConnectCallOptions,
  type Client,
  type Interceptor,
  type Transport,
  createClient,
} from "@connectrpc/connect";
import { Code, DualstreamError, toDualstreamError } from "./errors.js";
import {
  type Event as EventMessage,
  EventService,
  type GetStatusResponse,
  SlowConsumerPolicy,
  SubscribeRequestSchema,
} from "./gen/dualstream/v1/event_service_pb.js";
import {
  type EventInput,
  type PublishResult,
  type StreamMessage,
  eventToProto,
  publishResultFromProto,
} from "./messages.js";
import { type ReconnectOptions, type ResumeState, resumingStream } from "./resume.js";
import { type RetryOptions, retryPublish } from "./retry.js";
import { AdaptiveThrottle, type ThrottleOptions } from "./throttle.js";
import { type Connection, type TlsOptions, openConnection } from "./transport.js";
import { uuidv7 } from "./uuid7.js";

export interface ClientOptions {
  /** `host:port` or `unix:/path`. Default `127.0.0.1:50051`, where `make up` listens. */
  target?: string;
  /** The sidecar's `auth_token`, sent as `authorization: Bearer <token>`. */
  token?: string;
  /** `true` for TLS with the system's roots, or `{ ca }` to trust a private CA. */
  tls?: TlsOptions | boolean;
  /** The deadline of each unary call (each attempt of it). Default 30,000 ms. */
  timeoutMs?: number;
  /**
   * Retrying publishes after UNAVAILABLE or a capacity refusal (waiting at least the refusal's
   * `retryAfterMs`). Default on; `{ maxAttempts: 1 }` turns it off.
   */
  retry?: RetryOptions;
  /**
   * Client-side throttling of publishes: while the sidecar refuses this client's calls as past
   * capacity, the client refuses a share of them itself, without sending them
   * (`DualstreamError` with `throttled: true`, RESOURCE_EXHAUSTED and a `retryAfterMs`), so the
   * sidecar is not kept busy refusing. One throttle per client, shared by all its publishes.
   * Default on (ratio 1.2, window 5,000 ms, 20 calls minimum); `false` turns it off.
   */
  throttle?: ThrottleOptions | false;
  /** Reconnecting subscriptions after their stream broke. */
  reconnect?: ReconnectOptions;
  /** HTTP/2 PINGs at this interval notice a silent sidecar on a quiet stream. Default off. */
  keepaliveIntervalMs?: number;
  /** connect interceptors run on every call, for example to add tracing headers. */
  interceptors?: Interceptor[];
  /**
   * A connect `Transport` to use instead of the client's own HTTP/2 connection (then
   * `target`, `token`, `tls`, `keepaliveIntervalMs` and `interceptors` are not used), e.g.
   * `createRouterTransport` in tests.
   */
  transport?: Transport;
}

/** Options of one call. */
export interface CallOptions {
  signal?: AbortSignal;
  /** Overrides the client's `timeoutMs` for this call. */
  timeoutMs?: number;
  /** Extra request metadata, for example a `traceparent`. */
  headers?: ConnectCallOptions["headers"];
}

/** One event's outcome in a batch, in request order. */
export type BatchItemResult =
  | { ok: true; id: string; result: PublishResult }
  | { ok: false; id: string; error: DualstreamError };

export type SlowConsumerPolicyName = "gap" | "replay" | "close";

export interface SubscribeOptions {
  /** `[sourceType, sourceId]` pairs or `{ sourceType, sourceId }`; `sourceId` may be `*`. */
  sources: ReadonlyArray<readonly [string, string] | { sourceType: string; sourceId: string }>;
  /** Only events of these types; empty means every type. */
  types?: readonly string[];
  /** What the sidecar does when the stream cannot deliver everything live. Default `gap`. */
  policy?: SlowConsumerPolicyName;
  /**
   * Reconnect and resume from the last cursor when the stream breaks. Default on, except with
   * policy `close`: the application asked to be told, so the break ends the loop with its
   * `DualstreamError` (the subscription's `cursor` is where to resume from).
   */
  autoResume?: boolean;
  /** Carry each event's payload and attributes in its notification. */
  includeData?: boolean;
  /** Start by replaying everything after this cursor (from any earlier message). */
  resumeCursor?: string;
  /** Start by replaying from the oldest event Kafka holds, or from a time. */
  start?: "earliest" | Date;
  /**
   * Let the sidecar pack up to this many notifications in one message under a backlog (they
   * are unpacked: one notification at a time still). Default 64; 1 keeps one per message.
   */
  maxNotificationsPerMessage?: number;
  /** Stops the subscription: iteration ends quietly. */
  signal?: AbortSignal;
  /** Overrides the client's `reconnect` options for this subscription. */
  reconnect?: ReconnectOptions;
}

/**
 * How many notifications the sidecar may pack in one message unless a subscription says
 * otherwise. A stream with a backlog then costs the sidecar a fraction per notification, so it
 * catches up instead of being held back into gaps.
 */
export const DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE = 64;

const POLICIES: Record<SlowConsumerPolicyName, SlowConsumerPolicy> = {
  gap: SlowConsumerPolicy.GAP,
  replay: SlowConsumerPolicy.REPLAY,
  close: SlowConsumerPolicy.CLOSE,
};

/**
 * A client of one dualstream sidecar. It keeps one HTTP/2 connection, opened on the first call
 * and reopened after a failure; `close()` drops it. An idle client does not keep Node running.
 */
export class DualstreamClient {
  readonly #connection: Connection;
  readonly #rpc: Client<typeof EventService>;
  readonly #options: ClientOptions;
  readonly #throttle: AdaptiveThrottle | undefined;

  constructor(options: ClientOptions = {}) {
    this.#options = options;
    this.#throttle = options.throttle === false ? undefined : new AdaptiveThrottle(options.throttle);
    this.#connection =
      options.transport !== undefined
        ? { transport: options.transport, close: () => {} }
        : openConnection({
            target: options.target ?? "127.0.0.1:50051",
            token: options.token,
            tls: options.tls,
            keepaliveIntervalMs: options.keepaliveIntervalMs,
            interceptors: options.interceptors,
          });
    this.#rpc = createClient(EventService, this.#connection.transport);
  }

  /**
   * Publish one event: resolves once Kafka acknowledged it. An event without an id gets a
   * UUIDv7 here, so the retries after UNAVAILABLE or a capacity refusal (see `retry`) send the
   * same id.
   */
  async publish(event: EventInput, options: CallOptions = {}): Promise<PublishResult> {
    const request = { event: eventToProto(event, event.id || uuidv7()) };
    const response = await retryPublish(
      () => this.#throttled(() => this.#rpc.publish(request, this.#callOptions(options))),
      this.#options.retry,
      options.signal,
    );
    return publishResultFromProto(response);
  }

  /**
   * Publish several events in one call; one result per event, in order. One invalid event
   * rejects the whole batch with INVALID_ARGUMENT (`error.field` names it, e.g.
   * `events[1].source_type`) and nothing is written. Events Kafka did not acknowledge with
   * UNAVAILABLE are sent again, with the same ids, within the `retry` budget; a call refused
   * as a whole as past capacity wrote nothing and is sent again whole. Throws when no call was
   * answered at all; once one was, its acknowledged events are reported as such.
   */
  async publishBatch(events: readonly EventInput[], options: CallOptions = {}): Promise<BatchItemResult[]> {
    const messages = events.map((event) => eventToProto(event, event.id || uuidv7()));
    const results: BatchItemResult[] = [];
    let pending = messages.map((_, index) => index);
    const sendPending = async (): Promise<void> => {
      const response = await this.#throttled(() =>
        this.#rpc.publishBatch(
          { events: pending.map((index) => messages[index] as EventMessage) },
          this.#callOptions(options),
        ),
      );
      if (response.results.length !== pending.length) {
        throw new DualstreamError(
          Code.Unknown,
          `the sidecar answered ${response.results.length} results for ${pending.length} events`,
        );
      }
      const unacknowledged: number[] = [];
      response.results.forEach((item, position) => {
        const index = pending[position] as number;
        const outcome = item.outcome;
        if (outcome.case === "published") {
          results[index] = { ok: true, id: item.id, result: publishResultFromProto(outcome.value) };
          return;
        }
        const error = new DualstreamError(outcome.value?.code ?? Code.Unknown, outcome.value?.message ?? "");
        results[index] = { ok: false, id: item.id, error };
        if (error.code === Code.Unavailable) {
          unacknowledged.push(index);
        }
      });
      pending = unacknowledged;
      if (pending.length > 0) {
        throw new UnacknowledgedEvents(pending.length);
      }
    };
    try {
      await retryPublish(sendPending, this.#options.retry, options.signal);
    } catch (error) {
      if (results.length === 0) {
        throw error; // no call was answered: the batch failed as a whole
      }
      // An earlier call was answered: its acknowledged events stand, and the events still
      // unacknowledged carry the error that ended the retries (their own, or the last call's).
      if (!(error instanceof UnacknowledgedEvents)) {
        for (const index of pending) {
          results[index] = { ok: false, id: messages[index]?.id ?? "", error: error as DualstreamError };
        }
      }
    }
    return results;
  }

  /** The sidecar's detailed status (the generated message; see `GetStatusResponse`). */
  async status(options: CallOptions = {}): Promise<GetStatusResponse> {
    try {
      return await this.#rpc.getStatus({}, this.#callOptions(options));
    } catch (error) {
      throw toDualstreamError(error);
    }
  }

  /**
   * Follow sources. Iterate the result with `for await`: the first message is `subscribed`
   * (everything published after it is delivered), then `notification`, `gap` and `caughtUp`
   * messages. When the stream breaks (the sidecar restarted, the network dropped,
   * UNAVAILABLE), the subscription reconnects with jittered backoff and resumes from the last
   * cursor it handed over: every event once, each source in order; a new `subscribed` with
   * `resumed: true` marks the seam (`autoResume`: on unless the policy is `close`). Gaps are
   * always handed over. Abort `signal`, `close()` or `break` to stop.
   */
  subscribe(options: SubscribeOptions): Subscription {
    const request = create(SubscribeRequestSchema, {
      sources: options.sources.map((source) =>
        "sourceType" in source ? { sourceType: source.sourceType, sourceId: source.sourceId } : { sourceType: source[0], sourceId: source[1] },
      ),
      types: [...(options.types ?? [])],
      resumeCursor: options.resumeCursor ?? "",
      slowConsumerPolicy: POLICIES[options.policy ?? "gap"],
      includeData: options.includeData ?? false,
      maxNotificationsPerMessage: options.maxNotificationsPerMessage ?? DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE,
    });
    if (options.start === "earliest") {
      request.start = { $typeName: "dualstream.v1.StartPosition", position: { case: "earliest", value: true } };
    } else if (options.start instanceof Date) {
      request.start = {
        $typeName: "dualstream.v1.StartPosition",
        position: { case: "time", value: timestampFromDate(options.start) },
      };
    }
    const callOptions = this.#callOptions({});
    return new Subscription(
      (attemptRequest, signal) =>
        this.#rpc.subscribe(attemptRequest, { ...callOptions, timeoutMs: 0, signal }),
      request,
      {
        resume: options.autoResume ?? options.policy !== "close",
        reconnect: options.reconnect ?? this.#options.reconnect ?? {},
      },
      options.signal,
    );
  }

  /** Drop the connection; calls still running fail. */
  close(): void {
    this.#connection.close();
  }

  /** One publish attempt, through the throttle when the client has one. */
  #throttled<T>(attempt: () => Promise<T>): Promise<T> {
    return this.#throttle === undefined ? attempt() : this.#throttle.run(attempt);
  }

  #callOptions(options: CallOptions): ConnectCallOptions {
    return {
      timeoutMs: options.timeoutMs ?? this.#options.timeoutMs ?? 30_000,
      ...(options.signal === undefined ? {} : { signal: options.signal }),
      ...(options.headers === undefined ? {} : { headers: options.headers }),
    };
  }
}

/** A subscription: an `AsyncIterable` of stream messages that resumes across broken streams. */
export class Subscription implements AsyncIterable<StreamMessage> {
  readonly #state: ResumeState = { cursor: "", connections: 0, lastError: undefined };
  readonly #stop = new AbortController();
  readonly #messages: AsyncGenerator<StreamMessage, void, undefined>;
  #iterated = false;

  /** @internal */
  constructor(
    open: Parameters<typeof resumingStream>[0],
    request: Parameters<typeof resumingStream>[1],
    options: { resume: boolean; reconnect: ReconnectOptions },
    signal: AbortSignal | undefined,
  ) {
    this.#state.cursor = request.resumeCursor;
    const signals = signal === undefined ? [this.#stop.signal] : [this.#stop.signal, signal];
    this.#messages = resumingStream(open, request, {
      ...options,
      signal: AbortSignal.any(signals),
      state: this.#state,
    });
  }

  /** The cursor of the last message handed over: resume from it to miss nothing after it. */
  get cursor(): string {
    return this.#state.cursor;
  }

  /** How many times the stream broke and was resumed. */
  get reconnects(): number {
    return Math.max(0, this.#state.connections - 1);
  }

  /** The error that broke the last connection, if one did. */
  get lastError(): DualstreamError | undefined {
    return this.#state.lastError;
  }

  /** Stop: a running `for await` ends quietly. */
  close(): void {
    this.#stop.abort();
  }

  [Symbol.asyncIterator](): AsyncIterator<StreamMessage> {
    if (this.#iterated) {
      throw new TypeError("a Subscription can be iterated once; subscribe again for another reader");
    }
    this.#iterated = true;
    return this.#messages;
  }
}

/** Some events of a batch were answered UNAVAILABLE: the call is retried for them alone. */
class UnacknowledgedEvents extends DualstreamError {
  constructor(count: number) {
    super(Code.Unavailable, `${count} events of the batch were not acknowledged`);
  }
}
