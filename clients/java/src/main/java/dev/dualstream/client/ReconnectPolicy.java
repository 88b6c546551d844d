package dev.dualstream.client;

import java.time.Duration;
import java.util.Objects;
import java.util.Optional;

/**
 * How a subscription resumes when its stream breaks (the sidecar restarted, the network failed,
 * {@code UNAVAILABLE}): it reconnects after {@code backoff} and resumes from the cursor of the last
 * message it delivered, so the application sees every event once, in per-source order. The backoff
 * starts over once a stream is live again.
 *
 * @param backoff the wait before each reconnection attempt
 * @param giveUpAfter how long the stream may stay broken before the subscription fails with the
 *     last error; empty to keep trying for as long as the subscription is open
 */
public record ReconnectPolicy(Backoff backoff, Optional<Duration> giveUpAfter) {
  /**
   * Reconnect 100 ms to 5 s apart, and fail the subscription once the stream has stayed broken for
   * 5 minutes (as every dualstream client does).
   */
  public static final ReconnectPolicy DEFAULT =
      new ReconnectPolicy(
          new Backoff(Duration.ofMillis(100), Duration.ofSeconds(5)),
          Optional.of(Duration.ofMinutes(5)));

  /** Never reconnect: a broken stream fails the subscription at once. */
  public static final ReconnectPolicy NEVER =
      new ReconnectPolicy(DEFAULT.backoff(), Optional.of(Duration.ZERO));

  /** Reconnect with {@code backoff} for as long as the subscription is open. */
  public static ReconnectPolicy forever(Backoff backoff) {
    return new ReconnectPolicy(backoff, Optional.empty());
  }

  public ReconnectPolicy {
    Objects.requireNonNull(backoff, "backoff");
    Objects.requireNonNull(giveUpAfter, "giveUpAfter");
    giveUpAfter.ifPresent(
        limit -> {
          if (limit.isNegative()) {
            throw new IllegalArgumentException("giveUpAfter must not be negative: " + limit);
          }
        });
  }

  /** Reconnect with {@code backoff}, failing once the stream has been broken for {@code limit}. */
  public static ReconnectPolicy giveUpAfter(Backoff backoff, Duration limit) {
    return new ReconnectPolicy(backoff, Optional.of(limit));
  }
}
