package dev.dualstream.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;

import io.grpc.Status;
import java.io.IOException;
import java.nio.channels.ClosedChannelException;
import org.junit.jupiter.api.Test;

/** How gRPC failures become the client's exceptions. */
class ErrorsTest {
  @Test
  void aConnectionClosedUnderACallIsUnavailable() {
    // What grpc-java's Netty transport reports when the sidecar is killed mid-call.
    Status closed =
        Status.UNKNOWN.withDescription("channel closed").withCause(new ClosedChannelException());
    DualstreamException error = Errors.translate(closed.asRuntimeException());
    assertInstanceOf(UnavailableException.class, error);
    assertEquals("channel closed", error.details());
  }

  @Test
  void otherUnknownFailuresStayUnknown() {
    Status unknown = Status.UNKNOWN.withDescription("boom").withCause(new IOException("boom"));
    DualstreamException error = Errors.translate(unknown.asRuntimeException());
    assertEquals(Status.Code.UNKNOWN, error.code());
  }
}
