package dev.dualstream.client;

import io.grpc.Status;
import java.time.Duration;

/**
 * A limit was hit: the sidecar's Kafka buffer is full, too many streams or calls, or a stream with
 * {@link SlowConsumerPolicy#CLOSE} fell behind. A publish refused because the sidecar is past its
 * capacity carries a {@link #retryAfter() retry hint} (and is retried by the {@link RetryPolicy});
 * one the client's throttle held back is also {@link #throttled()}.
 */
public final class ResourceExhaustedException extends DualstreamException {
  private static final long serialVersionUID = 1L;

  ResourceExhaustedException(String details, Throwable cause) {
    this(details, cause, null, false);
  }

  ResourceExhaustedException(
      String details, Throwable cause, Duration retryAfter, boolean throttled) {
    super(Status.Code.RESOURCE_EXHAUSTED, details, cause, retryAfter, throttled);
  }
}
