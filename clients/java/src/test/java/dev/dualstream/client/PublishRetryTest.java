package dev.dualstream.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.dualstream.v1.Error;
import dev.dualstream.v1.Event;
import dev.dualstream.v1.PublishBatchResponse;
import dev.dualstream.v1.PublishBatchResult;
import dev.dualstream.v1.PublishResponse;
import io.grpc.Status;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** Publish retries UNAVAILABLE with the same event ids, boundedly. */
class PublishRetryTest {
  private static final RetryPolicy QUICK =
      new RetryPolicy(4, new Backoff(Duration.ofMillis(5), Duration.ofMillis(20)));

  private FakeSidecar sidecar;
  private DualstreamClient client;

  @BeforeEach
  void start() throws Exception {
    sidecar = new FakeSidecar();
    client = DualstreamClient.builder(sidecar.target()).retryPolicy(QUICK).build();
  }

  @AfterEach
  void stop() throws Exception {
    client.close();
    sidecar.close();
  }

  @Test
  void anEventWithoutIdGetsAUuidV7ThatEveryRetryReuses() {
    List<String> ids = new CopyOnWriteArrayList<>();
    sidecar.publish =
        (request, response) -> {
          ids.add(request.getEvent().getId());
          if (ids.size() < 3) {
            response.onError(Status.UNAVAILABLE.withDescription("kafka down").asRuntimeException());
          } else {
            CallLayerTest.respond(response, request);
          }
        };
    PublishResult result = client.publish(EventInput.of("t", "user", "a", new byte[0]));
    assertEquals(3, ids.size());
    assertEquals(1, ids.stream().distinct().count(), "retries changed the id: " + ids);
    assertEquals(7, UUID.fromString(ids.get(0)).version());
    assertEquals(ids.get(0), result.id());
  }

  @Test
  void aGivenIdIsKept() {
    List<String> ids = new CopyOnWriteArrayList<>();
    sidecar.publish =
        (request, response) -> {
          ids.add(request.getEvent().getId());
          CallLayerTest.respond(response, request);
        };
    client.publish(EventInput.builder("t", "user", "a").id("mine").build());
    assertEquals(List.of("mine"), ids);
  }

  @Test
  void retriesStopAfterMaxAttempts() {
    AtomicInteger calls = new AtomicInteger();
    sidecar.publish =
        (request, response) -> {
          calls.incrementAndGet();
          response.onError(Status.UNAVAILABLE.withDescription("kafka down").asRuntimeException());
        };
    UnavailableException failure =
        assertThrows(
            UnavailableException.class,
            () -> client.publish(EventInput.of("t", "user", "a", new byte[0])));
    assertEquals("kafka down", failure.details());
    assertEquals(QUICK.maxAttempts(), calls.get());
  }

  @Test
  void otherFailuresAreNotRetried() {
    AtomicInteger calls = new AtomicInteger();
    sidecar.publish =
        (request, response) -> {
          calls.incrementAndGet();
          response.onError(
              Status.RESOURCE_EXHAUSTED.withDescription("buffer full").asRuntimeException());
        };
    assertThrows(
        ResourceExhaustedException.class,
        () -> client.publish(EventInput.of("t", "user", "a", new byte[0])));
    assertEquals(1, calls.get());
  }

  @Test
  void noRetryStartsThatCouldNotFinishBeforeTheDeadline() throws Exception {
    AtomicInteger calls = new AtomicInteger();
    sidecar.publish =
        (request, response) -> {
          calls.incrementAndGet();
          response.onError(Status.UNAVAILABLE.asRuntimeException());
        };
    RetryPolicy slow =
        new RetryPolicy(5, new Backoff(Duration.ofSeconds(60), Duration.ofSeconds(60)));
    try (DualstreamClient patient =
        DualstreamClient.builder(sidecar.target())
            .retryPolicy(slow)
            .deadline(Duration.ofSeconds(20))
            .build()) {
      assertThrows(
          UnavailableException.class,
          () -> patient.publish(EventInput.of("t", "user", "a", new byte[0])));
    }
    assertEquals(1, calls.get());
  }

  @Test
  void aBatchResendsOnlyItsUnavailableEventsAndKeepsTheOrder() {
    List<List<String>> calls = new CopyOnWriteArrayList<>();
    sidecar.publishBatch =
        (request, response) -> {
          List<String> ids = new ArrayList<>();
          PublishBatchResponse.Builder results = PublishBatchResponse.newBuilder();
          for (Event event : request.getEventsList()) {
            ids.add(event.getId());
            PublishBatchResult.Builder result =
                PublishBatchResult.newBuilder().setId(event.getId());
            if (calls.isEmpty() && event.getSourceId().equals("b")) {
              result.setError(Error.newBuilder().setCode(14).setMessage("no ack"));
            } else if (event.getSourceId().equals("c")) {
              result.setError(Error.newBuilder().setCode(3).setMessage("too large"));
            } else {
              result.setPublished(
                  PublishResponse.newBuilder().setId(event.getId()).setOffset(ids.size()));
            }
            results.addResults(result);
          }
          calls.add(ids);
          response.onNext(results.build());
          response.onCompleted();
        };
    List<BatchItemResult> results =
        client.publishBatch(
            List.of(
                EventInput.builder("t", "user", "a").id("a1").build(),
                EventInput.of("t", "user", "b", new byte[0]),
                EventInput.builder("t", "user", "c").id("c1").build()));
    assertEquals(2, calls.size());
    assertEquals(3, calls.get(0).size());
    String generatedId = calls.get(0).get(1);
    assertEquals(List.of(generatedId), calls.get(1), "only the unavailable event is resent");
    assertEquals(
        List.of("a1", generatedId, "c1"), results.stream().map(BatchItemResult::id).toList());
    assertTrue(results.get(0).isPublished());
    assertTrue(results.get(1).isPublished());
    assertFalse(results.get(2).isPublished());
    assertEquals(Status.Code.INVALID_ARGUMENT, results.get(2).error().orElseThrow().code());
  }

  @Test
  void aBatchWhoseRetryFailsAsAWholeKeepsWhatWasAcknowledged() {
    AtomicInteger calls = new AtomicInteger();
    sidecar.publishBatch =
        (request, response) -> {
          if (calls.incrementAndGet() > 1) {
            response.onError(Status.UNAVAILABLE.withDescription("gone").asRuntimeException());
            return;
          }
          PublishBatchResponse.Builder results = PublishBatchResponse.newBuilder();
          for (Event event : request.getEventsList()) {
            PublishBatchResult.Builder result =
                PublishBatchResult.newBuilder().setId(event.getId());
            if (event.getSourceId().equals("b")) {
              result.setError(Error.newBuilder().setCode(14).setMessage("no ack"));
            } else {
              result.setPublished(PublishResponse.newBuilder().setId(event.getId()));
            }
            results.addResults(result);
          }
          response.onNext(results.build());
          response.onCompleted();
        };
    List<BatchItemResult> results =
        client.publishBatch(
            List.of(
                EventInput.builder("t", "user", "a").id("a1").build(),
                EventInput.builder("t", "user", "b").id("b1").build()));
    assertEquals(QUICK.maxAttempts(), calls.get());
    assertTrue(results.get(0).isPublished());
    DualstreamException error = results.get(1).error().orElseThrow();
    assertTrue(error instanceof UnavailableException);
    assertEquals("gone", error.details());
    assertEquals("b1", results.get(1).id());
  }

  @Test
  void aBatchThatFailsAsAWholeFromTheStartThrows() {
    AtomicInteger calls = new AtomicInteger();
    sidecar.publishBatch =
        (request, response) -> {
          calls.incrementAndGet();
          response.onError(Status.UNAVAILABLE.withDescription("kafka down").asRuntimeException());
        };
    assertThrows(
        UnavailableException.class,
        () -> client.publishBatch(List.of(EventInput.of("t", "user", "a", new byte[0]))));
    assertEquals(QUICK.maxAttempts(), calls.get());
  }

  @Test
  void aBatchWhoseRetriesRunOutReportsTheEventsStillUnavailable() {
    sidecar.publishBatch =
        (request, response) -> {
          PublishBatchResponse.Builder results = PublishBatchResponse.newBuilder();
          for (Event event : request.getEventsList()) {
            results.addResults(
                PublishBatchResult.newBuilder()
                    .setId(event.getId())
                    .setError(Error.newBuilder().setCode(14).setMessage("no ack")));
          }
          response.onNext(results.build());
          response.onCompleted();
        };
    List<BatchItemResult> results =
        client.publishBatch(List.of(EventInput.of("t", "user", "a", new byte[0])));
    DualstreamException error = results.get(0).error().orElseThrow();
    assertTrue(error instanceof UnavailableException);
    assertEquals("no ack", error.details());
  }
}
