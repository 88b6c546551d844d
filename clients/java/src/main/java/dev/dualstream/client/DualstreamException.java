package dev.dualstream.client;

import io.grpc.Status;
import java.time.Duration;
import java.util.Optional;

/**
 * A call to the sidecar failed. {@link #code()} is the gRPC status code and {@link #details()} the
 * sidecar's explanation. Subclasses name the codes a caller is expected to handle; any other code
 * arrives as this class itself.
 */
public class DualstreamException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final Status.Code code;
  private final String details;
  private final Duration retryAfter;
  private final boolean throttled;

  DualstreamException(Status.Code code, String details, Throwable cause) {
    this(code, details, cause, null, false);
  }

  DualstreamException(
      Status.Code code, String details, Throwable cause, Duration retryAfter, boolean throttled) {
    super(code + (details.isEmpty() ? "" : ": " + details), cause);
    this.code = code;
    this.details = details;
    this.retryAfter = retryAfter;
    this.throttled = throttled;
  }

  /** The gRPC status code of the failure. */
  public Status.Code code() {
    return code;
  }

  /** The sidecar's (or gRPC's) explanation, possibly empty. */
  public String details() {
    return details;
  }

  /**
   * How long the sidecar asked the client to wait before trying again, present on a capacity
   * refusal: a {@link ResourceExhaustedException} for a publish refused at once, with nothing
   * written, because the sidecar was past its capacity (its {@code google.rpc.RetryInfo} detail,
   * else its {@code grpc-retry-pushback-ms} trailer). Retrying after it with the same event ids is
   * safe, and the client's {@link RetryPolicy} does so. Empty for every other failure, including a
   * {@code RESOURCE_EXHAUSTED} that a retry would only repeat (a request over the size limit, too
   * many streams).
   */
  public Optional<Duration> retryAfter() {
    return Optional.ofNullable(retryAfter);
  }

  /**
   * Whether the client itself refused the call without sending it: its {@link ThrottlePolicy
   * throttle} held the call back because the sidecar had been refusing this client's calls as past
   * capacity. Such a refusal is a {@link ResourceExhaustedException} whose {@link #retryAfter()} is
   * the sidecar's last hint (100 ms if it gave none).
   */
  public boolean throttled() {
    return throttled;
  }

  /** Whether this is a refusal for capacity, by the sidecar or the client's throttle. */
  boolean isCapacityRefusal() {
    return code == Status.Code.RESOURCE_EXHAUSTED && retryAfter != null;
  }
}
