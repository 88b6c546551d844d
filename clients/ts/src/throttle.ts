import { Code, DualstreamError, isCapacityRefusal, toDualstreamError } from "./errors.js";

/**
 * Client-side throttling of publishes (Google SRE book, "Handling Overload"): once the sidecar
 * refuses this client's calls as past capacity, the client refuses a matching share of them
 * itself, at once and without sending them. Past its capacity even a refusal costs the sidecar
 * about what an empty call costs, so calls it would refuse anyway are better never sent: its
 * queue stays short and its own refusals stay fast.
 */
export interface ThrottleOptions {
  /**
   * The client sends up to `ratio` times the calls the sidecar accepted over the window and
   * refuses the rest locally (with probability `(requests - ratio * accepts) / (requests + 1)`).
   * Default 1.2; at least 1, since below it the client would hold calls back from a sidecar
   * that accepts them all.
   */
  ratio?: number;
  /** The sliding window the counts cover, kept as 10 buckets. Default 5,000 ms. */
  windowMs?: number;
  /**
   * Until the sidecar has answered this many calls within the window the client refuses none,
   * so a handful of refusals do not throttle a quiet client, and a burst of calls not yet
   * answered does not throttle one that has just started. Default 20.
   */
  minRequests?: number;
}

/** The hint a local refusal gives when the sidecar has not given one in the window. */
const DEFAULT_HINT_MS = 100;
const BUCKETS = 10;

interface Bucket {
  /** Which bucket-long span of the clock these counts are from. */
  span: number;
  requests: number;
  answered: number;
  accepts: number;
  refusals: number;
}

type Totals = Omit<Bucket, "span">;

/**
 * One client's throttle, shared by all its publishes. Node runs the client on one thread, so
 * the counts need no lock.
 */
export class AdaptiveThrottle {
  readonly #ratio: number;
  readonly #bucketMs: number;
  readonly #minRequests: number;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #buckets: Bucket[] = Array.from({ length: BUCKETS }, () => ({ span: -1, requests: 0, answered: 0, accepts: 0, refusals: 0 }));
  #lastHint: { ms: number; span: number } | undefined;

  constructor(options: ThrottleOptions = {}, clock: { now?: () => number; random?: () => number } = {}) {
    const { ratio = 1.2, windowMs = 5_000, minRequests = 20 } = options;
    if (!(ratio >= 1) || !Number.isFinite(ratio)) {
      throw new RangeError(`throttle.ratio ${ratio} is not a finite number of at least 1 (throttle: false turns it off)`);
    }
    if (!(windowMs > 0) || !Number.isFinite(windowMs)) {
      throw new RangeError(`throttle.windowMs ${windowMs} is not a finite number above 0`);
    }
    if (!Number.isInteger(minRequests) || minRequests < 0) {
      throw new RangeError(`throttle.minRequests ${minRequests} is not a whole number of at least 0`);
    }
    this.#ratio = ratio;
    this.#bucketMs = windowMs / BUCKETS;
    this.#minRequests = minRequests;
    this.#now = clock.now ?? (() => performance.now());
    this.#random = clock.random ?? Math.random;
  }

  /**
   * Run one publish attempt through the throttle: refused at once with a throttled
   * RESOURCE_EXHAUSTED, or sent and its answer counted. Errors come out as `DualstreamError`s.
   */
  async run<T>(call: () => Promise<T>): Promise<T> {
    const refusal = this.admit();
    if (refusal !== undefined) {
      throw refusal;
    }
    let result: T;
    try {
      result = await call();
    } catch (thrown) {
      const error = toDualstreamError(thrown);
      this.record(error);
      throw error;
    }
    this.record(undefined);
    return result;
  }

  /**
   * Decide one attempt, which counts as a request at once: `undefined` to send it (then
   * `record` its answer), or the local refusal. Counted when made, calls left waiting at a
   * sidecar that queues them weigh against it before it refuses any.
   */
  admit(): DualstreamError | undefined {
    const span = this.#span();
    const totals = this.#totals(span);
    this.#bucket(span).requests += 1;
    if (totals.answered < this.#minRequests || this.#random() >= this.#probability(totals)) {
      return undefined;
    }
    const hintMs = this.#lastHint !== undefined && this.#lastHint.span > span - BUCKETS ? this.#lastHint.ms : DEFAULT_HINT_MS;
    return new DualstreamError(
      Code.ResourceExhausted,
      `not sent: the sidecar refused ${totals.refusals} of this client's last ${totals.requests} calls as past capacity, ` +
        `so the client holds calls back (client-side throttling); retry in ${Math.round(hintMs)} ms`,
      { retryAfterMs: hintMs, throttled: true },
    );
  }

  /**
   * Count the answer to an attempt `admit` let through (`undefined`: success). A capacity
   * refusal counts as such; a deadline that expired, or a caller who cancelled, is no accept;
   * any other answer (UNAVAILABLE included) is one.
   */
  record(error: DualstreamError | undefined): void {
    const span = this.#span();
    const bucket = this.#bucket(span);
    bucket.answered += 1;
    if (error !== undefined && isCapacityRefusal(error)) {
      bucket.refusals += 1;
      this.#lastHint = { ms: error.retryAfterMs ?? DEFAULT_HINT_MS, span };
    } else if (error === undefined || (error.code !== Code.DeadlineExceeded && error.code !== Code.Canceled)) {
      bucket.accepts += 1;
    }
  }

  /** The probability the next attempt is refused locally (0 below `minRequests` answers). */
  refusalProbability(): number {
    const totals = this.#totals(this.#span());
    return totals.answered < this.#minRequests ? 0 : this.#probability(totals);
  }

  #probability(totals: Totals): number {
    return Math.max(0, (totals.requests - this.#ratio * totals.accepts) / (totals.requests + 1));
  }

  #span(): number {
    return Math.floor(this.#now() / this.#bucketMs);
  }

  /** The bucket of `span`, emptied first when it last held an older span. */
  #bucket(span: number): Bucket {
    const bucket = this.#buckets[((span % BUCKETS) + BUCKETS) % BUCKETS] as Bucket;
    if (bucket.span !== span) {
      Object.assign(bucket, { span, requests: 0, answered: 0, accepts: 0, refusals: 0 });
    }
    return bucket;
  }

  /** The counts of the window that ends with `span`. */
  #totals(span: number): Totals {
    const totals = { requests: 0, answered: 0, accepts: 0, refusals: 0 };
    for (const bucket of this.#buckets) {
      if (bucket.span > span - BUCKETS && bucket.span <= span) {
        totals.requests += bucket.requests;
        totals.answered += bucket.answered;
        totals.accepts += bucket.accepts;
        totals.refusals += bucket.refusals;
      }
    }
    return totals;
  }
}
