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
import io.grpc.Deadline;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Predicate;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * Publishes refused as past capacity: the hint reaches the exception, retries wait at least the
 * hint with the same ids, and the client's throttle holds calls back while the sidecar refuses.
 */
class CapacityRefusalTest {
  private static final RetryPolicy QUICK =
      new RetryPolicy(4, new Backoff(Duration.ofMillis(5), Duration.ofMillis(20)));
  private static final Duration HINT = Duration.ofMillis(300);

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
  void aRefusalIsRetriedWithTheSameIdAfterAtLeastTheHint() {
    List<String> ids = new CopyOnWriteArrayList<>();
    List<Long> arrivals = new CopyOnWriteArrayList<>();
    sidecar.publish =
        (request, response) -> {
          arrivals.add(System.nanoTime());
          ids.add(request.getEvent().getId());
          if (ids.size() == 1) {
            response.onError(FakeSidecar.capacityRefusal(HINT));
          } else if (ids.size() == 2) {
            response.onError(FakeSidecar.pushbackRefusal(HINT.toMillis()));
          } else {
            CallLayerTest.respond(response, request);
          }
        };
    try (DualstreamClient client =
        DualstreamClient.builder(sidecar.target()).retryPolicy(QUICK).build()) {
      PublishResult result = client.publish(EventInput.of("t", "user", "a", new byte[0]));
      assertEquals(ids.get(0), result.id());
    }
    assertEquals(3, ids.size());
    assertEquals(1, ids.stream().distinct().count(), "retries changed the id: " + ids);
    for (int i = 1; i < arrivals.size(); i++) {
      Duration waited = Duration.ofNanos(arrivals.get(i) - arrivals.get(i - 1));
      assertTrue(waited.compareTo(HINT) >= 0, "retry " + i + " came after only " + waited);
    }
  }

  @Test
  void withoutRetriesTheRefusalCarriesItsHint() {
    sidecar.publish =
        (request, response) -> {
          // As the sidecar does: an empty response, then the failing status, which decides.
          response.onNext(PublishResponse.getDefaultInstance());
          response.onError(FakeSidecar.capacityRefusal(HINT));
        };
    try (DualstreamClient client =
        DualstreamClient.builder(sidecar.target()).retryPolicy(RetryPolicy.NONE).build()) {
      ResourceExhaustedException refusal =
          assertThrows(
              ResourceExhaustedException.class,
              () -> client.publish(EventInput.of("t", "user", "a", new byte[0])));
      assertEquals(Optional.of(HINT), refusal.retryAfter());
      assertFalse(refusal.throttled());
      assertEquals("past capacity", refusal.details());
    }
  }

  @Test
  void noRetryWaitsForAHintThatEndsPastTheDeadline() {
    AtomicInteger calls = new AtomicInteger();
    sidecar.publish =
        (request, response) -> {
          calls.incrementAndGet();
          response.onError(FakeSidecar.capacityRefusal(Duration.ofSeconds(60)));
        };
    try (DualstreamClient client =
        DualstreamClient.builder(sidecar.target())
            .retryPolicy(QUICK)
            .deadline(Duration.ofSeconds(20))
            .build()) {
      ResourceExhaustedException refusal =
          assertThrows(
              ResourceExhaustedException.class,
              () -> client.publish(EventInput.of("t", "user", "a", new byte[0])));
      assertEquals(Optional.of(Duration.ofSeconds(60)), refusal.retryAfter());
    }
    assertEquals(1, calls.get());
  }

  @Test
  void aBatchRefusedAsAWholeIsRetriedWhole() {
    List<List<String>> calls = new CopyOnWriteArrayList<>();
    sidecar.publishBatch =
        (request, response) -> {
          calls.add(request.getEventsList().stream().map(Event::getId).toList());
          if (calls.size() == 1) {
            response.onError(FakeSidecar.capacityRefusal(Duration.ofMillis(50)));
            return;
          }
          response.onNext(results(request.getEventsList(), event -> false));
          response.onCompleted();
        };
    publishABatchOfTwo();
    assertEquals(2, calls.size());
    assertEquals(calls.get(0), calls.get(1), "the retry sends the whole batch, same ids");
  }

  @Test
  void aBatchRetryRefusedForCapacityIsRetriedAgain() {
    List<List<String>> calls = new CopyOnWriteArrayList<>();
    sidecar.publishBatch =
        (request, response) -> {
          calls.add(request.getEventsList().stream().map(Event::getSourceId).toList());
          if (calls.size() == 2) {
            response.onError(FakeSidecar.capacityRefusal(Duration.ofMillis(50)));
            return;
          }
          boolean first = calls.size() == 1;
          response.onNext(
              results(request.getEventsList(), event -> first && event.getSourceId().equals("b")));
          response.onCompleted();
        };
    publishABatchOfTwo();
    assertEquals(List.of(List.of("a", "b"), List.of("b"), List.of("b")), calls);
  }

  @Test
  void theDefaultThrottleHoldsCallsBackWhileTheSidecarRefuses() {
    AtomicInteger received = new AtomicInteger();
    sidecar.publish =
        (request, response) -> {
          received.incrementAndGet();
          response.onError(FakeSidecar.capacityRefusal(HINT));
        };
    int attempts = 200;
    List<ResourceExhaustedException> throttled = new ArrayList<>();
    try (DualstreamClient client =
        DualstreamClient.builder(sidecar.target()).retryPolicy(RetryPolicy.NONE).build()) {
      for (int i = 0; i < attempts; i++) {
        ResourceExhaustedException refusal =
            assertThrows(
                ResourceExhaustedException.class,
                () -> client.publish(EventInput.of("t", "user", "a", new byte[0])));
        assertEquals(Optional.of(HINT), refusal.retryAfter());
        if (refusal.throttled()) {
          throttled.add(refusal);
        }
      }
    }
    // Past 20 attempts, each is refused locally with probability above 0.95: the chance that
    // fewer than half of the last 180 are is nil.
    assertTrue(throttled.size() > 90, throttled.size() + " of " + attempts + " throttled");
    assertEquals(attempts, received.get() + throttled.size(), "a throttled call was sent");
    assertTrue(
        throttled.get(0).details().startsWith("not sent: the sidecar refused "),
        throttled.get(0).details());
    assertTrue(throttled.get(0).details().endsWith("retry in 300 ms"), throttled.get(0).details());
  }

  @Test
  void withoutTheThrottleEveryCallIsSent() {
    AtomicInteger received = new AtomicInteger();
    sidecar.publish =
        (request, response) -> {
          received.incrementAndGet();
          response.onError(FakeSidecar.capacityRefusal(HINT));
        };
    try (DualstreamClient client =
        DualstreamClient.builder(sidecar.target())
            .retryPolicy(RetryPolicy.NONE)
            .throttlePolicy(ThrottlePolicy.NONE)
            .build()) {
      for (int i = 0; i < 100; i++) {
        ResourceExhaustedException refusal =
            assertThrows(
                ResourceExhaustedException.class,
                () -> client.publish(EventInput.of("t", "user", "a", new byte[0])));
        assertFalse(refusal.throttled());
      }
    }
    assertEquals(100, received.get());
  }

  @Test
  void aThrottledAttemptIsRetriedThroughTheThrottleAfterItsHint() {
    // A throttle that 20 refusals with a 300 ms hint have shut, and whose draws then refuse the
    // first attempt and send the second.
    Iterator<Double> draws = List.of(0.0, 0.999_999).iterator();
    Throttle throttle = new Throttle(ThrottlePolicy.DEFAULT, System::nanoTime, draws::next);
    for (int i = 0; i < ThrottlePolicy.DEFAULT.minRequests(); i++) {
      throttle.admit();
      throttle.answered(Errors.translate(FakeSidecar.capacityRefusal(HINT)));
    }
    List<Long> attempts = new CopyOnWriteArrayList<>();
    AtomicInteger sent = new AtomicInteger();
    Retrier retrier = new Retrier(QUICK, () -> {});
    String result =
        retrier
            .run(
                Deadline.after(60, TimeUnit.SECONDS),
                number -> {
                  attempts.add(System.nanoTime());
                  return throttle.run(
                      () -> {
                        sent.incrementAndGet();
                        return CompletableFuture.completedFuture("published");
                      });
                },
                value -> Optional.empty())
            .join();
    assertEquals("published", result);
    assertEquals(2, attempts.size());
    assertEquals(1, sent.get(), "the throttled attempt was sent");
    Duration waited = Duration.ofNanos(attempts.get(1) - attempts.get(0));
    assertTrue(waited.compareTo(HINT) >= 0, "the retry came after only " + waited);
  }

  /** Publishes a batch of two events, of sources "a" and "b", and expects both published. */
  private void publishABatchOfTwo() {
    try (DualstreamClient client =
        DualstreamClient.builder(sidecar.target()).retryPolicy(QUICK).build()) {
      List<BatchItemResult> results =
          client.publishBatch(
              List.of(
                  EventInput.of("t", "user", "a", new byte[0]),
                  EventInput.of("t", "user", "b", new byte[0])));
      assertTrue(results.stream().allMatch(BatchItemResult::isPublished));
    }
  }

  /** Every event acknowledged but those {@code unavailable} picks, which get UNAVAILABLE. */
  private static PublishBatchResponse results(List<Event> events, Predicate<Event> unavailable) {
    PublishBatchResponse.Builder results = PublishBatchResponse.newBuilder();
    for (Event event : events) {
      PublishBatchResult.Builder result = PublishBatchResult.newBuilder().setId(event.getId());
      if (unavailable.test(event)) {
        result.setError(Error.newBuilder().setCode(14).setMessage("no ack"));
      } else {
        result.setPublished(PublishResponse.newBuilder().setId(event.getId()));
      }
      results.addResults(result);
    }
    return results.build();
  }
}
