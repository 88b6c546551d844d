package dev.dualstream.client;

import io.grpc.Status;

/**
 * A call to the sidecar failed. {@link #code()} is the gRPC status code and {@link #details()} the
 * sidecar's explanation. Subclasses name the codes a caller is expected to handle; any other code
 * arrives as this class itself.
 */
public class DualstreamException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final Status.Code code;
  private final String details;

  DualstreamException(Status.Code code, String details, Throwable cause) {
    super(code + (details.isEmpty() ? "" : ": " + details), cause);
    this.code = code;
    this.details = details;
  }

  /** The gRPC status code of the failure. */
  public Status.Code code() {
    return code;
  }

  /** The sidecar's (or gRPC's) explanation, possibly empty. */
  public String details() {
    return details;
  }
}
