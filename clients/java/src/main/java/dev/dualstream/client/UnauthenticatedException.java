package dev.dualstream.client;

import io.grpc.Status;

/** The sidecar requires a bearer token and the call had none, or a wrong one. */
public final class UnauthenticatedException extends DualstreamException {
  private static final long serialVersionUID = 1L;

  UnauthenticatedException(String details, Throwable cause) {
    super(Status.Code.UNAUTHENTICATED, details, cause);
  }
}
