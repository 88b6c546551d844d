import { type BackoffOptions, type Sleep, backoffDelayMs, sleep as realSleep } from "./backoff.js";
import { Code, DualstreamError, isCapacityRefusal, toDualstreamError } from "./errors.js";

/**
 * How publishing retries a call that failed with UNAVAILABLE, or was refused as past capacity
 * (RESOURCE_EXHAUSTED with a retry hint, from the sidecar or the client's throttle).
 */
export interface RetryOptions extends BackoffOptions {
  /** Attempts in all, the first included. Default 8: 6 to 11 s of waits at the default backoff, enough to ride out a sidecar restart; 1 turns retrying off. */
  maxAttempts?: number;
  /**
   * A time budget: no new attempt starts once this many ms have passed since the first, or
   * would have after the wait before it. Default none (the attempts bound it).
   */
  maxElapsedMs?: number;
}

/**
 * Run `call` until it succeeds, fails with anything but UNAVAILABLE or a capacity refusal, or
 * used `maxAttempts` or `maxElapsedMs`. After a capacity refusal the wait is the longer of its
 * hint and the backoff's: the sidecar knows when it expects room, the backoff keeps the jitter.
 * Only for calls that are safe to repeat: every event already carries its final id, and a
 * refused call wrote nothing.
 */
export async function retryPublish<T>(
  call: () => Promise<T>,
  options: RetryOptions = {},
  signal?: AbortSignal,
  clock: { sleep?: Sleep; random?: () => number; now?: () => number } = {},
): Promise<T> {
  const { sleep = realSleep, random, now = () => performance.now() } = clock;
  const maxAttempts = Math.max(1, options.maxAttempts ?? 8);
  const giveUpAt = now() + (options.maxElapsedMs ?? Number.POSITIVE_INFINITY);
  for (let attempt = 1; ; attempt++) {
    let error: DualstreamError;
    try {
      return await call();
    } catch (thrown) {
      error = toDualstreamError(thrown);
    }
    if ((error.code !== Code.Unavailable && !isCapacityRefusal(error)) || attempt >= maxAttempts || signal?.aborted) {
      throw error;
    }
    // Only a capacity refusal carries a hint.
    const delayMs = Math.max(error.retryAfterMs ?? 0, backoffDelayMs(attempt - 1, options, random));
    if (now() + delayMs > giveUpAt) {
      throw error;
    }
    await sleep(delayMs, signal);
    if (signal?.aborted) {
      throw new DualstreamError(Code.Canceled, "the call was aborted while waiting to retry", { cause: error });
    }
  }
}
