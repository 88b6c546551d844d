package dev.dualstream.client;

import io.grpc.Deadline;
import java.time.Duration;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.function.IntFunction;
import java.util.function.Predicate;

/**
 * Runs a call again, as a {@link RetryPolicy} says, while it fails with {@code UNAVAILABLE} (or
 * succeeds with a result that {@code incomplete} says needs another attempt), never past the
 * deadline. Cancelling the returned future cancels the attempt in flight and any retry.
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

  /**
   * @param attempt starts attempt {@code n} (1, 2, ...); its future fails with a {@link
   *     DualstreamException}
   * @param incomplete whether a successful result still has parts worth retrying; when the attempts
   *     run out, that result is returned as it is
   */
  <T> CompletableFuture<T> run(
      Deadline deadline, IntFunction<CompletableFuture<T>> attempt, Predicate<T> incomplete) {
    CompletableFuture<T> result = new CompletableFuture<>();
    start(1, deadline, attempt, incomplete, result);
    return result;
  }

  private <T> void start(
      int number,
      Deadline deadline,
      IntFunction<CompletableFuture<T>> attempt,
      Predicate<T> incomplete,
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
          boolean retryable =
              failure != null
                  ? Errors.translate(failure) instanceof UnavailableException
                  : incomplete.test(value);
          Duration delay = retryable ? delayBeforeRetry(number, deadline) : null;
          if (delay != null) {
            CompletableFuture.delayedExecutor(delay.toNanos(), TimeUnit.NANOSECONDS)
                .execute(() -> start(number + 1, deadline, attempt, incomplete, result));
          } else if (failure != null) {
            result.completeExceptionally(Errors.translate(failure));
          } else {
            result.complete(value);
          }
        });
  }

  /** The wait before attempt {@code failed + 1}, or null when there is none to make. */
  private Duration delayBeforeRetry(int failed, Deadline deadline) {
    if (failed >= policy.maxAttempts()) {
      return null;
    }
    Duration delay = policy.backoff().delayBefore(failed);
    if (deadline != null && deadline.timeRemaining(TimeUnit.NANOSECONDS) <= delay.toNanos()) {
      return null; // The retry could not finish in time: report the failure now.
    }
    return delay;
  }
}
