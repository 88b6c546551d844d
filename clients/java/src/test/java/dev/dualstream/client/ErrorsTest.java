package dev.dualstream.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;

import io.grpc.Metadata;
import io.grpc.Status;
import java.io.IOException;
import java.nio.channels.ClosedChannelException;
import java.time.Duration;
import java.util.Optional;
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

  @Test
  void aCapacityRefusalCarriesTheRetryInfoDelay() {
    // The detail says 1.5 s, the trailer 2 s: the rich error model comes first.
    Metadata trailers = FakeSidecar.capacityRefusal(Duration.ofMillis(1500)).getTrailers();
    trailers.put(
        Metadata.Key.of("grpc-retry-pushback-ms", Metadata.ASCII_STRING_MARSHALLER), "2000");
    DualstreamException error =
        Errors.translate(
            Status.RESOURCE_EXHAUSTED.withDescription("busy").asRuntimeException(trailers));
    assertInstanceOf(ResourceExhaustedException.class, error);
    assertEquals(Optional.of(Duration.ofMillis(1500)), error.retryAfter());
    assertFalse(error.throttled());
    assertEquals("busy", error.details());
  }

  @Test
  void thePushbackTrailerAloneIsAHint() {
    DualstreamException error = Errors.translate(FakeSidecar.pushbackRefusal(250));
    assertEquals(Optional.of(Duration.ofMillis(250)), error.retryAfter());
    assertEquals(
        Optional.of(Duration.ZERO), Errors.translate(FakeSidecar.pushbackRefusal(0)).retryAfter());
  }

  @Test
  void withoutAValidHintResourceExhaustedIsNoCapacityRefusal() {
    assertEquals(
        Optional.empty(),
        Errors.translate(
                Status.RESOURCE_EXHAUSTED.withDescription("too large").asRuntimeException())
            .retryAfter());
    assertEquals(Optional.empty(), Errors.translate(FakeSidecar.pushbackRefusal(-5)).retryAfter());
    Metadata garbage = new Metadata();
    garbage.put(
        Metadata.Key.of("grpc-retry-pushback-ms", Metadata.ASCII_STRING_MARSHALLER), "soon");
    garbage.put(
        Metadata.Key.of("grpc-status-details-bin", Metadata.BINARY_BYTE_MARSHALLER),
        new byte[] {(byte) 0xff, 0x01});
    DualstreamException error =
        Errors.translate(Status.RESOURCE_EXHAUSTED.asRuntimeException(garbage));
    assertInstanceOf(ResourceExhaustedException.class, error);
    assertEquals(Optional.empty(), error.retryAfter());
  }

  @Test
  void aHintOnAnotherCodeIsIgnored() {
    Metadata trailers = FakeSidecar.pushbackRefusal(250).getTrailers();
    DualstreamException error = Errors.translate(Status.UNAVAILABLE.asRuntimeException(trailers));
    assertInstanceOf(UnavailableException.class, error);
    assertEquals(Optional.empty(), error.retryAfter());
  }
}
