import { setTimeout as delay } from "node:timers/promises";

/** Exponential backoff between attempts, with jitter so that many clients do not retry in step. */
export interface BackoffOptions {
  /** The ceiling of the first wait. Default 100 ms. */
  initialMs?: number;
  /** The ceiling no wait goes above. Default 5,000 ms. */
  maxMs?: number;
  /** How much the ceiling grows per attempt. Default 2. */
  multiplier?: number;
}

/**
 * The wait before retry number `attempt` (0 for the first retry): "equal jitter", a uniform
 * draw between half the ceiling and the ceiling, where the ceiling is
 * `min(maxMs, initialMs * multiplier ** attempt)`. Half is kept so a burst of failures never
 * turns into a hot loop.
 */
export function backoffDelayMs(
  attempt: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const initialMs = options.initialMs ?? 100;
  const maxMs = options.maxMs ?? 5_000;
  const multiplier = options.multiplier ?? 2;
  const ceiling = Math.min(maxMs, initialMs * multiplier ** Math.max(0, attempt));
  return ceiling / 2 + random() * (ceiling / 2);
}

/** Sleep, or return early (without throwing) once `signal` aborts. */
export type Sleep = (ms: number, signal: AbortSignal | undefined) => Promise<void>;

export const sleep: Sleep = async (ms, signal) => {
  try {
    await delay(ms, undefined, signal === undefined ? {} : { signal });
  } catch (error) {
    if (!signal?.aborted) {
      throw error;
    }
  }
};
