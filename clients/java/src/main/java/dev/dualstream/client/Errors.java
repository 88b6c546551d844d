package dev.dualstream.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.RetryInfo;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.protobuf.ProtoUtils;
import java.nio.channels.ClosedChannelException;
import java.time.Duration;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ExecutionException;

/** The one place where gRPC failures become the client's exceptions. */
final class Errors {
  private static final Metadata.Key<com.google.rpc.Status> STATUS_DETAILS =
      Metadata.Key.of(
          "grpc-status-details-bin",
          ProtoUtils.metadataMarshaller(com.google.rpc.Status.getDefaultInstance()));
  private static final Metadata.Key<String> RETRY_PUSHBACK_MS =
      Metadata.Key.of("grpc-retry-pushback-ms", Metadata.ASCII_STRING_MARSHALLER);

  private Errors() {}

  /** The client exception for a failed call; anything already translated passes through. */
  static DualstreamException translate(Throwable failure) {
    Throwable cause = unwrap(failure);
    if (cause instanceof DualstreamException translated) {
      return translated;
    }
    if (cause instanceof CancellationException) {
      return forStatus(Status.CANCELLED.withDescription("cancelled by the caller"), null, cause);
    }
    return forStatus(Status.fromThrowable(cause), Status.trailersFromThrowable(cause), cause);
  }

  /**
   * The client exception for a status and the trailers it came with ({@code null} if none); a
   * {@code RESOURCE_EXHAUSTED} carrying a retry hint is a capacity refusal.
   */
  static DualstreamException forStatus(Status status, Metadata trailers, Throwable cause) {
    String details = status.getDescription() == null ? "" : status.getDescription();
    Status.Code code = transportCode(status);
    if (code == Status.Code.RESOURCE_EXHAUSTED && trailers != null) {
      Duration hint = retryHint(trailers);
      if (hint != null) {
        return new ResourceExhaustedException(details, cause, hint, false);
      }
    }
    return forCode(code, details, cause);
  }

  /**
   * The wait the sidecar asked for: the {@code google.rpc.RetryInfo} detail of the rich error
   * model, else the {@code grpc-retry-pushback-ms} trailer; {@code null} if neither holds a valid
   * one. A malformed hint is no hint: it must not turn the failure into another.
   */
  static Duration retryHint(Metadata trailers) {
    try {
      com.google.rpc.Status rich = trailers.get(STATUS_DETAILS);
      if (rich != null) {
        for (Any detail : rich.getDetailsList()) {
          if (detail.is(RetryInfo.class)) {
            com.google.protobuf.Duration delay = detail.unpack(RetryInfo.class).getRetryDelay();
            if (delay.getSeconds() >= 0 && delay.getNanos() >= 0) {
              return Duration.ofSeconds(delay.getSeconds(), delay.getNanos());
            }
          }
        }
      }
    } catch (IllegalArgumentException | InvalidProtocolBufferException e) {
      // grpc-status-details-bin that does not parse: fall back to the pushback trailer.
    }
    String pushback = trailers.get(RETRY_PUSHBACK_MS);
    if (pushback != null) {
      try {
        long millis = Long.parseLong(pushback.trim());
        if (millis >= 0) {
          return Duration.ofMillis(millis);
        }
      } catch (NumberFormatException e) {
        // Not a number of milliseconds: no hint.
      }
    }
    return null;
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
