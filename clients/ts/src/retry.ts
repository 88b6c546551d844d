import { type BackoffOptions, type Sleep, backoffDelayMs, sleep as realSleep } from "./backoff.js";
import { Code, DualstreamError, toDualstreamError } from "./errors.js";

/** How publishing retries a call that failed with UNAVAILABLE. */
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
 * Run `call` until it succeeds, fails with anything but UNAVAILABLE, or used `maxAttempts`
 * or `maxElapsedMs`.
 * Only for calls that are safe to repeat: every event already carries its final id.
 */
export async function retryUnavailable<T>(
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
    if (error.code !== Code.Unavailable || attempt >= maxAttempts || signal?.aborted) {
      throw error;
    }
    const delayMs = backoffDelayMs(attempt - 1, options, random);
    if (now() + delayMs > giveUpAt) {
      throw error;
    }
    await sleep(delayMs, signal);
    if (signal?.aborted) {
      throw new DualstreamError(Code.Canceled, "the call was aborted while waiting to retry", { cause: error });
    }
  }
}
