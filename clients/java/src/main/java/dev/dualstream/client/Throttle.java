package dev.dualstream.client;

import io.grpc.Status;
import java.time.Duration;
import java.util.Arrays;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ThreadLocalRandom;
import java.util.function.DoubleSupplier;
import java.util.function.LongSupplier;
import java.util.function.Supplier;

/**
 * A client's adaptive throttle, as its {@link ThrottlePolicy} describes: one per client, shared by
 * all its publish attempts, thread-safe. The counts live in {@value #BUCKETS} buckets of a tenth of
 * the window each, on a monotonic clock, so old ones drop out as the clock moves.
 *
 * <p>Every attempt counts as a request when it is made, so calls left waiting at a sidecar that
 * queues them weigh against it before it refuses any; its answer is counted when it comes. Nothing
 * is held back until the sidecar has answered {@code minRequests} attempts within the window:
 * otherwise a client starting with 32 calls at once would throttle the 21st before any answer came,
 * and its own refusals would then keep it shut.
 */
final class Throttle {
  /** The retry hint of a local refusal before the sidecar has given one. */
  static final Duration DEFAULT_HINT = Duration.ofMillis(100);

  private static final int BUCKETS = 10;

  private final ThrottlePolicy policy;
  private final LongSupplier nanoClock;
  private final DoubleSupplier uniform;
  private final long bucketNanos;
  // Bucket i holds the counts of the clock's bucket number epochs[i] (number = now / bucketNanos).
  private final long[] epochs = new long[BUCKETS];
  private final long[] requests = new long[BUCKETS];
  private final long[] answers = new long[BUCKETS];
  private final long[] accepts = new long[BUCKETS];
  private final long[] refusals = new long[BUCKETS];
  private Duration lastHint = DEFAULT_HINT;

  Throttle(ThrottlePolicy policy) {
    this(policy, System::nanoTime, () -> ThreadLocalRandom.current().nextDouble());
  }

  /**
   * @param nanoClock a monotonic clock in nanoseconds
   * @param uniform draws from {@code [0, 1)}: an attempt is refused when the draw is below the
   *     refusal probability
   */
  Throttle(ThrottlePolicy policy, LongSupplier nanoClock, DoubleSupplier uniform) {
    this.policy = policy;
    this.nanoClock = nanoClock;
    this.uniform = uniform;
    this.bucketNanos = Math.max(1, policy.window().toNanos() / BUCKETS);
    Arrays.fill(epochs, Long.MIN_VALUE);
  }

  /**
   * Starts {@code attempt} unless the throttle refuses it, in which case the future fails at once
   * with a throttled {@link ResourceExhaustedException}; counts the sidecar's answer when it comes.
   * Cancelling the returned future (the attempt's own) cancels the attempt, which is not counted.
   */
  <T> CompletableFuture<T> run(Supplier<CompletableFuture<T>> attempt) {
    if (!policy.enabled()) {
      return attempt.get();
    }
    ResourceExhaustedException refusal = admit();
    if (refusal != null) {
      return CompletableFuture.failedFuture(refusal);
    }
    CompletableFuture<T> call = attempt.get();
    call.whenComplete(
        (value, failure) -> {
          if (!call.isCancelled()) {
            answered(failure == null ? null : Errors.translate(failure));
          }
        });
    return call;
  }

  /**
   * Decides on an attempt, counted as a request now: returns null to send it ({@link #answered}
   * counts its answer later), or the refusal to fail it with.
   */
  synchronized ResourceExhaustedException admit() {
    long now = nanoClock.getAsLong();
    long requested = sum(requests, now);
    long accepted = sum(accepts, now);
    long refused = sum(refusals, now);
    add(requests, now);
    if (sum(answers, now) < policy.minRequests()) {
      return null;
    }
    double probability = Math.max(0, (requested - policy.ratio() * accepted) / (requested + 1.0));
    if (uniform.getAsDouble() >= probability) {
      return null;
    }
    return new ResourceExhaustedException(
        "not sent: the sidecar refused "
            + refused
            + " of this client's last "
            + requested
            + " calls as past capacity, so the client holds calls back (client-side throttling);"
            + " retry in "
            + lastHint.toMillis()
            + " ms",
        null,
        lastHint,
        true);
  }

  /** Counts the sidecar's answer to a sent attempt: {@code failure} null for a success. */
  synchronized void answered(DualstreamException failure) {
    long now = nanoClock.getAsLong();
    add(answers, now);
    if (failure != null && failure.isCapacityRefusal()) {
      add(refusals, now);
      lastHint = failure.retryAfter().orElse(lastHint);
    } else if (failure == null || failure.code() != Status.Code.DEADLINE_EXCEEDED) {
      add(accepts, now);
    }
  }

  private void add(long[] counts, long now) {
    int bucket = bucketOf(now);
    counts[bucket]++;
  }

  /** The bucket of {@code now}, emptied first if it last held an older bucket number. */
  private int bucketOf(long now) {
    long epoch = Math.floorDiv(now, bucketNanos);
    int bucket = (int) Math.floorMod(epoch, (long) BUCKETS);
    if (epochs[bucket] != epoch) {
      epochs[bucket] = epoch;
      requests[bucket] = 0;
      answers[bucket] = 0;
      accepts[bucket] = 0;
      refusals[bucket] = 0;
    }
    return bucket;
  }

  /** The counts of the buckets within the window ending at {@code now}. */
  private long sum(long[] counts, long now) {
    long epoch = Math.floorDiv(now, bucketNanos);
    long total = 0;
    for (int i = 0; i < BUCKETS; i++) {
      if (epochs[i] > epoch - BUCKETS && epochs[i] <= epoch) {
        total += counts[i];
      }
    }
    return total;
  }
}
