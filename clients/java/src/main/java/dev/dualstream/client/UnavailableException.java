package dev.dualstream.client;

import io.grpc.Status;

/**
 * Kafka or the sidecar could not be reached, or the sidecar is shutting down. A publish that failed
 * so may or may not have been written: retrying it with the same event id is safe.
 */
public final class UnavailableException extends DualstreamException {
  private static final long serialVersionUID = 1L;

  UnavailableException(String details, Throwable cause) {
    super(Status.Code.UNAVAILABLE, details, cause);
  }
}
