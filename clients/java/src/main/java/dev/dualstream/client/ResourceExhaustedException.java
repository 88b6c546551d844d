package dev.dualstream.client;

import io.grpc.Status;

/**
 * A limit was hit: the sidecar's Kafka buffer is full, too many streams or calls, or a stream with
 * {@link SlowConsumerPolicy#CLOSE} fell behind.
 */
public final class ResourceExhaustedException extends DualstreamException {
  private static final long serialVersionUID = 1L;

  ResourceExhaustedException(String details, Throwable cause) {
    super(Status.Code.RESOURCE_EXHAUSTED, details, cause);
  }
}
