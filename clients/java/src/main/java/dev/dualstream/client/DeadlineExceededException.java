package dev.dualstream.client;

import io.grpc.Status;

/**
 * The call's deadline passed. A publish that failed so may or may not have been written: retrying
 * it with the same event id is safe.
 */
public final class DeadlineExceededException extends DualstreamException {
  private static final long serialVersionUID = 1L;

  DeadlineExceededException(String details, Throwable cause) {
    super(Status.Code.DEADLINE_EXCEEDED, details, cause);
  }
}
