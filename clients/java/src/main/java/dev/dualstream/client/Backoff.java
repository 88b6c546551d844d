package dev.dualstream.client;

import java.time.Duration;
import java.util.Objects;
import java.util.concurrent.ThreadLocalRandom;
import java.util.function.DoubleSupplier;

/**
 * Exponential backoff with jitter: before retry {@code n} (1, 2, ...) the client waits a time drawn
 * uniformly from {@code [d/2, d]}, where {@code d = min(max, initial * 2^(n-1))}. The jitter keeps
 * many clients that lost the same sidecar from reconnecting in lockstep.
 *
 * @param initial the nominal first delay, positive
 * @param max the longest nominal delay, at least {@code initial}
 */
public record Backoff(Duration initial, Duration max) {
  public Backoff {
    Objects.requireNonNull(initial, "initial");
    Objects.requireNonNull(max, "max");
    if (initial.isNegative() || initial.isZero()) {
      throw new IllegalArgumentException("initial must be positive, not " + initial);
    }
    if (max.compareTo(initial) < 0) {
      throw new IllegalArgumentException("max (" + max + ") is below initial (" + initial + ")");
    }
  }

  /** The delay before retry {@code retry} (1 for the first), with random jitter. */
  public Duration delayBefore(int retry) {
    return delayBefore(retry, () -> ThreadLocalRandom.current().nextDouble());
  }

  /** As {@link #delayBefore(int)}, drawing the jitter from {@code uniform} in {@code [0, 1)}. */
  Duration delayBefore(int retry, DoubleSupplier uniform) {
    if (retry < 1) {
      throw new IllegalArgumentException("retries count from 1, not " + retry);
    }
    long initialNanos = initial.toNanos();
    long maxNanos = max.toNanos();
    // Doubling past 62 times overflows; the cap is reached long before that anyway.
    int doublings = Math.min(retry - 1, 62);
    long nominal =
        initialNanos > (maxNanos >> doublings)
            ? maxNanos
            : Math.min(maxNanos, initialNanos << doublings);
    long half = nominal / 2;
    return Duration.ofNanos(half + (long) (uniform.getAsDouble() * (nominal - half)));
  }
}
