package dev.dualstream.client;

import io.grpc.Deadline;
import java.time.Duration;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;
import java.util.function.IntFunction;

/**
 * Runs a call again, as a {@link RetryPolicy} says, while it fails in a way a retry can mend
 * ({@code UNAVAILABLE}, or a capacity refusal by the sidecar or the client's throttle) or succeeds
 * with a result that still holds such a failure, never past the deadline. After a capacity refusal
 * it waits at least the refusal's retry hint. Cancelling the returned future cancels the attempt in
 * flight and any retry.
 */
final class Retrier {
  private final RetryPolicy policy;
  private final Runnable beforeRetry;

  /**
   * @param beforeRetry runs before each retry: the client makes its channel reconnect at once
   *     rather than after gRPC's own connection backoff, which can be much longer than ours
   */
  Retrier(RetryPolicy policy, Runnable beforeRetry) {
    this.policy = policy;
    this.beforeRetry = beforeRetry;
  }

  /** Whether a retry with the same ids can mend {@code failure}. */
  static boolean retryable(DualstreamException failure) {
    return failure instanceof UnavailableException || failure.isCapacityRefusal();
  }

  /**
   * @param attempt starts attempt {@code n} (1, 2, ...); its future fails with a {@link
   *     DualstreamException}
   * @param unsettled the failure a successful result still holds for some of its parts, if any;
   *     when it is {@link #retryable} another attempt is made, and when the attempts run out, the
   *     result is returned as it is
   */
  <T> CompletableFuture<T> run(
      Deadline deadline,
      IntFunction<CompletableFuture<T>> attempt,
      Function<T, Optional<DualstreamException>> unsettled) {
    CompletableFuture<T> result = new CompletableFuture<>();
    start(1, deadline, attempt, unsettled, result);
    return result;
  }

  private <T> void start(
      int number,
      Deadline deadline,
      IntFunction<CompletableFuture<T>> attempt,
      Function<T, Optional<DualstreamException>> unsettled,
      CompletableFuture<T> result) {
    if (result.isDone()) {
      return; // Cancelled by the caller while waiting to retry.
    }
    if (number > 1) {
      beforeRetry.run();
    }
    CompletableFuture<T> call = attempt.apply(number);
    result.whenComplete(
        (value, failure) -> {
          if (result.isCancelled()) {
            call.cancel(false);
          }
        });
    call.whenComplete(
        (value, failure) -> {
          DualstreamException reason =
              failure != null ? Errors.translate(failure) : unsettled.apply(value).orElse(null);
          Duration delay =
              reason != null && retryable(reason)
                  ? delayBeforeRetry(number, reason, deadline)
                  : null;
          if (delay != null) {
            CompletableFuture.delayedExecutor(delay.toNanos(), TimeUnit.NANOSECONDS)
                .execute(() -> start(number + 1, deadline, attempt, unsettled, result));
          } else if (failure != null) {
            result.completeExceptionally(reason);
          } else {
            result.complete(value);
          }
        });
  }

  /**
   * The wait before attempt {@code failed + 1}, the backoff's or the retry hint of {@code reason},
   * whichever is longer; null when there is no retry to make.
   */
  private Duration delayBeforeRetry(int failed, DualstreamException reason, Deadline deadline) {
    if (failed >= policy.maxAttempts()) {
      return null;
    }
    Duration delay = policy.backoff().delayBefore(failed);
    Duration hint = reason.retryAfter().orElse(Duration.ZERO);
    if (hint.compareTo(delay) > 0) {
      delay = hint;
    }
    if (deadline != null && deadline.timeRemaining(TimeUnit.NANOSECONDS) <= delay.toNanos()) {
      return null; // The retry could not finish in time: report the failure now.
    }
    return delay;
  }
}
