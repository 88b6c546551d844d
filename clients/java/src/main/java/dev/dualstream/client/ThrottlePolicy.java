package dev.dualstream.client;

import java.time.Duration;
import java.util.Objects;

/**
 * The client-side throttle of {@code publish} and {@code publishBatch} (Google's SRE book,
 * "Handling Overload"): when the sidecar has been refusing this client's calls as past its
 * capacity, the client refuses a share of its calls itself, at once and without sending them, so a
 * sidecar at twice its capacity spends its time on the calls it can take rather than on refusing.
 *
 * <p>Over the last {@code window}, the client counts its publish attempts ({@code requests},
 * counted when made, including those it refused itself) and those the sidecar answered with
 * anything but a capacity refusal or {@code DEADLINE_EXCEEDED} ({@code accepts}). Once the sidecar
 * has answered {@code minRequests} attempts within the window, it refuses an attempt with
 * probability {@code max(0, (requests - ratio * accepts) / (requests + 1))}: while the sidecar
 * accepts everything, never; at twice its capacity, so that about {@code ratio} times what the
 * sidecar accepts is still sent. A refused attempt fails with a {@link ResourceExhaustedException}
 * that is {@link DualstreamException#throttled() throttled}, and the {@link RetryPolicy} retries it
 * like a refusal from the sidecar.
 *
 * @param ratio how many attempts to send per attempt the sidecar accepts: 0 turns the throttle off,
 *     otherwise at least 1 (below 1 the client would hold back calls even from a sidecar that
 *     accepts them all)
 * @param window how far back the counts reach (kept as 10 buckets of a tenth each), positive
 * @param minRequests attempts the sidecar must have answered within the window before the throttle
 *     refuses any (so a burst not yet answered is never held back), at least 0
 */
public record ThrottlePolicy(double ratio, Duration window, int minRequests) {
  /** Ratio 1.2 over 5 s, after 20 attempts: the client's default. */
  public static final ThrottlePolicy DEFAULT = new ThrottlePolicy(1.2, Duration.ofSeconds(5), 20);

  /** No client-side throttle: every attempt is sent. */
  public static final ThrottlePolicy NONE =
      new ThrottlePolicy(0, DEFAULT.window(), DEFAULT.minRequests());

  public ThrottlePolicy {
    Objects.requireNonNull(window, "window");
    if (!(ratio == 0 || ratio >= 1) || Double.isInfinite(ratio)) {
      throw new IllegalArgumentException("ratio must be 0 (off) or a number from 1, not " + ratio);
    }
    if (window.isNegative() || window.isZero()) {
      throw new IllegalArgumentException("window must be positive, not " + window);
    }
    if (minRequests < 0) {
      throw new IllegalArgumentException("minRequests must be at least 0, not " + minRequests);
    }
  }

  /** Whether the throttle is on ({@code ratio} is not 0). */
  public boolean enabled() {
    return ratio > 0;
  }
}
