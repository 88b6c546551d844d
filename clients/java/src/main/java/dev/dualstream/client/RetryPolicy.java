package dev.dualstream.client;

import java.time.Duration;
import java.util.Objects;

/**
 * How {@code publish} and {@code publishBatch} retry a call that failed with {@code UNAVAILABLE} or
 * was refused for capacity (a {@link ResourceExhaustedException} with a {@link
 * DualstreamException#retryAfter() retry hint}, from the sidecar or the client's throttle): at most
 * {@code maxAttempts} calls in all, waiting {@code backoff} between them (after a refusal, at least
 * its hint), and never past the call's deadline. Every retry sends the same event ids (the client
 * assigns a UUIDv7 to an event without one before the first attempt), so a retry of an event that
 * was in fact written is a duplicate consumers can recognise by id, never a different event.
 *
 * @param maxAttempts calls in all, at least 1 (1 means no retry)
 * @param backoff the wait between calls
 */
public record RetryPolicy(int maxAttempts, Backoff backoff) {
  /**
   * Eight attempts, 100 ms to 2 s apart (3.5 to 7 s of waiting in all): rides out a sidecar restart
   * of a few seconds.
   */
  public static final RetryPolicy DEFAULT =
      new RetryPolicy(8, new Backoff(Duration.ofMillis(100), Duration.ofSeconds(2)));

  /** One attempt: failures reach the caller at once. */
  public static final RetryPolicy NONE = new RetryPolicy(1, DEFAULT.backoff());

  public RetryPolicy {
    Objects.requireNonNull(backoff, "backoff");
    if (maxAttempts < 1) {
      throw new IllegalArgumentException("maxAttempts must be at least 1, not " + maxAttempts);
    }
  }
}
