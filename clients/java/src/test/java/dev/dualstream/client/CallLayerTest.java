package dev.dualstream.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.dualstream.v1.Event;
import dev.dualstream.v1.PublishRequest;
import dev.dualstream.v1.PublishResponse;
import io.grpc.Context;
import io.grpc.Deadline;
import io.grpc.Metadata;
import io.grpc.Status;
import java.time.Duration;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** The hand-built method descriptors and the call layer, against a scripted server. */
class CallLayerTest {
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private FakeSidecar sidecar;

  @BeforeEach
  void start() throws Exception {
    sidecar = new FakeSidecar();
  }

  @AfterEach
  void stop() throws Exception {
    sidecar.close();
  }

  @Test
  void publishRoundTripsTheEventAndTheResponse() {
    AtomicReference<Event> received = new AtomicReference<>();
    sidecar.publish =
        (request, response) -> {
          received.set(request.getEvent());
          response.onNext(
              PublishResponse.newBuilder()
                  .setId(request.getEvent().getId())
                  .setTopic("events")
                  .setPartition(3)
                  .setOffset(41)
                  .setNotified(true)
                  .build());
          response.onCompleted();
        };
    try (DualstreamClient client = DualstreamClient.builder(sidecar.target()).build()) {
      EventInput event =
          EventInput.builder("user.starred", "user", "octocat")
              .id("e-1")
              .json("{\"repo\":\"hello\"}")
              .attribute("tenant", "acme")
              .build();
      PublishResult result = client.publish(event);
      assertEquals(new PublishResult("e-1", "events", 3, 41, true), result);
      assertEquals("user.starred", received.get().getType());
      assertEquals("octocat", received.get().getSourceId());
      assertEquals("application/json", received.get().getContentType());
      assertEquals("acme", received.get().getAttributesMap().get("tenant"));
      assertEquals("{\"repo\":\"hello\"}", received.get().getData().toStringUtf8());
    }
  }

  @Test
  void theTokenTravelsAsABearerHeaderOnEveryCall() {
    sidecar.publish = (request, response) -> respond(response, request);
    try (DualstreamClient client =
        DualstreamClient.builder(sidecar.target()).token("s3cret").build()) {
      client.publish(EventInput.of("t", "user", "a", new byte[0]));
      client.publish(EventInput.of("t", "user", "b", new byte[0]));
    }
    assertEquals(2, sidecar.headers.size());
    for (Metadata headers : sidecar.headers) {
      assertEquals("Bearer s3cret", headers.get(AUTHORIZATION));
    }
  }

  @Test
  void withoutATokenNoAuthorizationHeaderIsSent() {
    sidecar.publish = (request, response) -> respond(response, request);
    try (DualstreamClient client = DualstreamClient.builder(sidecar.target()).build()) {
      client.publish(EventInput.of("t", "user", "a", new byte[0]));
    }
    assertNull(sidecar.headers.get(0).get(AUTHORIZATION));
  }

  @Test
  void theDeadlineReachesTheServer() {
    AtomicReference<Deadline> serverDeadline = new AtomicReference<>();
    sidecar.publish =
        (request, response) -> {
          serverDeadline.set(Context.current().getDeadline());
          respond(response, request);
        };
    try (DualstreamClient client =
        DualstreamClient.builder(sidecar.target()).deadline(Duration.ofSeconds(20)).build()) {
      client.publish(EventInput.of("t", "user", "a", new byte[0]));
    }
    assertTrue(serverDeadline.get().timeRemaining(TimeUnit.SECONDS) < 20);
  }

  @Test
  void aCallPastItsDeadlineFailsWithDeadlineExceeded() {
    sidecar.publish = (request, response) -> {}; // Never answers.
    try (DualstreamClient client =
        DualstreamClient.builder(sidecar.target()).deadline(Duration.ofMillis(300)).build()) {
      DeadlineExceededException failure =
          assertThrows(
              DeadlineExceededException.class,
              () -> client.publish(EventInput.of("t", "user", "a", new byte[0])));
      assertEquals(Status.Code.DEADLINE_EXCEEDED, failure.code());
    }
  }

  @Test
  void statusCodesBecomeTheirExceptions() {
    Status[] statuses = {
      Status.INVALID_ARGUMENT.withDescription("event.type: is required"),
      Status.UNAUTHENTICATED.withDescription("missing or wrong token"),
      Status.RESOURCE_EXHAUSTED.withDescription("too many streams"),
      Status.PERMISSION_DENIED.withDescription("no"),
    };
    Class<?>[] expected = {
      InvalidArgumentException.class,
      UnauthenticatedException.class,
      ResourceExhaustedException.class,
      DualstreamException.class,
    };
    try (DualstreamClient client = DualstreamClient.builder(sidecar.target()).build()) {
      for (int i = 0; i < statuses.length; i++) {
        Status status = statuses[i];
        sidecar.publish = (request, response) -> response.onError(status.asRuntimeException());
        DualstreamException failure =
            assertThrows(
                DualstreamException.class,
                () -> client.publish(EventInput.of("t", "user", "a", new byte[0])));
        assertEquals(expected[i], failure.getClass());
        assertEquals(status.getCode(), failure.code());
        assertEquals(status.getDescription(), failure.details());
      }
    }
  }

  @Test
  void invalidArgumentNamesTheField() {
    InvalidArgumentException nested =
        new InvalidArgumentException("events[1].source_type: contains ':'", null);
    assertEquals("events[1].source_type", nested.fieldPath());
    assertEquals("contains ':'", nested.problem());
    InvalidArgumentException attribute =
        new InvalidArgumentException(
            "event.attributes['Bad Name']: is not 1 to 20 lower-case letters or digits", null);
    assertEquals("event.attributes['Bad Name']", attribute.fieldPath());
    InvalidArgumentException unnamed =
        new InvalidArgumentException("something without a field", null);
    assertEquals("", unnamed.fieldPath());
    assertEquals("something without a field", unnamed.problem());
  }

  @Test
  void cancellingTheFutureCancelsTheCallOnTheServer() throws Exception {
    CountDownLatch started = new CountDownLatch(1);
    CountDownLatch cancelled = new CountDownLatch(1);
    sidecar.publish =
        (request, response) -> {
          Context.current().addListener(context -> cancelled.countDown(), Runnable::run);
          started.countDown();
        };
    try (DualstreamClient client = DualstreamClient.builder(sidecar.target()).build()) {
      CompletableFuture<PublishResult> call =
          client.publishAsync(EventInput.of("t", "user", "a", new byte[0]));
      assertTrue(started.await(30, TimeUnit.SECONDS));
      call.cancel(true);
      assertTrue(cancelled.await(30, TimeUnit.SECONDS), "the server saw no cancellation");
    }
  }

  @Test
  void asyncFailuresCompleteWithTheTranslatedException() {
    sidecar.publish =
        (request, response) ->
            response.onError(
                Status.INVALID_ARGUMENT.withDescription("event.id: is bad").asRuntimeException());
    try (DualstreamClient client = DualstreamClient.builder(sidecar.target()).build()) {
      CompletableFuture<PublishResult> call =
          client.publishAsync(EventInput.of("t", "user", "a", new byte[0]));
      Throwable failure = assertThrows(Exception.class, call::join).getCause();
      InvalidArgumentException invalid = assertInstanceOf(InvalidArgumentException.class, failure);
      assertEquals("event.id", invalid.fieldPath());
    }
  }

  static void respond(
      io.grpc.stub.StreamObserver<PublishResponse> response, PublishRequest request) {
    response.onNext(
        PublishResponse.newBuilder()
            .setId(request.getEvent().getId())
            .setTopic("events")
            .setNotified(true)
            .build());
    response.onCompleted();
  }
}
