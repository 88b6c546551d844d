package dev.dualstream.client;

import io.grpc.Status;
import java.nio.channels.ClosedChannelException;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ExecutionException;

/** The one place where gRPC failures become the client's exceptions. */
final class Errors {
  private Errors() {}

  /** The client exception for a failed call; anything already translated passes through. */
  static DualstreamException translate(Throwable failure) {
    Throwable cause = unwrap(failure);
    if (cause instanceof DualstreamException translated) {
      return translated;
    }
    if (cause instanceof CancellationException) {
      return forStatus(Status.CANCELLED.withDescription("cancelled by the caller"), cause);
    }
    return forStatus(Status.fromThrowable(cause), cause);
  }

  static DualstreamException forStatus(Status status, Throwable cause) {
    String details = status.getDescription() == null ? "" : status.getDescription();
    return forCode(transportCode(status), details, cause);
  }

  /**
   * The status's code, except that a connection lost under a call counts as UNAVAILABLE.
   * grpc-java's Netty transport reports a write to a connection that has just closed (a sidecar
   * killed while calls are in flight) as UNKNOWN "channel closed" caused by a {@link
   * ClosedChannelException}; it is the same break as UNAVAILABLE, and retrying or resuming it is as
   * safe.
   */
  private static Status.Code transportCode(Status status) {
    if (status.getCode() == Status.Code.UNKNOWN) {
      for (Throwable t = status.getCause(); t != null; t = t.getCause()) {
        if (t instanceof ClosedChannelException) {
          return Status.Code.UNAVAILABLE;
        }
      }
    }
    return status.getCode();
  }

  static DualstreamException forCode(Status.Code code, String details, Throwable cause) {
    return switch (code) {
      case INVALID_ARGUMENT -> new InvalidArgumentException(details, cause);
      case UNAVAILABLE -> new UnavailableException(details, cause);
      case RESOURCE_EXHAUSTED -> new ResourceExhaustedException(details, cause);
      case UNAUTHENTICATED -> new UnauthenticatedException(details, cause);
      case DEADLINE_EXCEEDED -> new DeadlineExceededException(details, cause);
      default -> new DualstreamException(code, details, cause);
    };
  }

  /** The error code a batch result carries (a gRPC code number) as a client exception. */
  static DualstreamException forCodeNumber(int code, String details) {
    return forCode(Status.fromCodeValue(code).getCode(), details, null);
  }

  private static Throwable unwrap(Throwable failure) {
    Throwable current = failure;
    while ((current instanceof CompletionException || current instanceof ExecutionException)
        && current.getCause() != null) {
      current = current.getCause();
    }
    return current;
  }
}
