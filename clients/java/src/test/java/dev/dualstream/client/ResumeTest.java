package dev.dualstream.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Timestamp;
import dev.dualstream.v1.NotificationBatch;
import dev.dualstream.v1.SubscribeRequest;
import dev.dualstream.v1.SubscribeResponse;
import dev.dualstream.v1.Subscribed;
import io.grpc.Status;
import io.grpc.stub.ServerCallStreamObserver;
import io.grpc.stub.StreamObserver;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** Automatic resume, flow control and the stream's message handling, on a scripted server. */
class ResumeTest {
  private static final Duration WAIT = Duration.ofSeconds(30);
  private static final ReconnectPolicy QUICK =
      new ReconnectPolicy(
          new Backoff(Duration.ofMillis(5), Duration.ofMillis(50)), Optional.empty());
  private static final SubscriptionRequest USERS =
      SubscriptionRequest.builder().allOf("user").build();

  private FakeSidecar sidecar;
  private DualstreamClient client;
  private final List<SubscribeRequest> requests = new CopyOnWriteArrayList<>();

  @BeforeEach
  void start() throws Exception {
    sidecar = new FakeSidecar();
    client = DualstreamClient.builder(sidecar.target()).reconnectPolicy(QUICK).build();
  }

  @AfterEach
  void stop() throws Exception {
    client.close();
    sidecar.close();
  }

  /** Each call plays the next script; a script ends its call with its last action. */
  private void script(List<Script> scripts) {
    AtomicInteger call = new AtomicInteger();
    sidecar.subscribe =
        (request, response) -> {
          requests.add(request);
          scripts.get(Math.min(call.getAndIncrement(), scripts.size() - 1)).play(response);
        };
  }

  @FunctionalInterface
  interface Script {
    void play(StreamObserver<SubscribeResponse> response) throws Exception;
  }

  @Test
  void aBrokenStreamResumesFromTheLastCursorWithNothingDoubledOrLost() {
    script(
        List.of(
            response -> {
              response.onNext(subscribed("c0"));
              response.onNext(notification("e1", 1, "c1"));
              response.onNext(notification("e2", 2, "c2"));
              response.onError(Status.UNAVAILABLE.withDescription("killed").asRuntimeException());
            },
            response -> response.onError(Status.UNAVAILABLE.asRuntimeException()),
            response -> {
              response.onNext(subscribed("c2"));
              response.onNext(replayed("e3", 3, "c3"));
              response.onNext(caughtUp(1, "c3"));
              response.onNext(notification("e4", 4, "c4"));
            }));
    try (Subscription subscription = client.subscribe(USERS)) {
      List<String> seen = new ArrayList<>();
      while (seen.size() < 5) {
        StreamMessage message = next(subscription);
        seen.add(message instanceof Notification n ? n.id() : message.getClass().getSimpleName());
      }
      assertEquals(List.of("e1", "e2", "e3", "CaughtUp", "e4"), seen);
      assertEquals("c4", subscription.cursor());
      assertEquals(1, subscription.reconnects());
    }
    assertEquals(3, requests.size());
    assertEquals("", requests.get(0).getResumeCursor());
    assertEquals(
        SubscriptionRequest.DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE,
        requests.get(0).getMaxNotificationsPerMessage(),
        "batches unless told otherwise");
    assertEquals(64, SubscriptionRequest.DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE);
    assertEquals("c2", requests.get(1).getResumeCursor());
    assertEquals("c2", requests.get(2).getResumeCursor());
    assertEquals(List.of("user"), List.of(requests.get(2).getSources(0).getSourceType()));
  }

  @Test
  void aResumeReplacesTheStartPositionWithTheCursor() {
    script(
        List.of(
            response -> {
              response.onNext(subscribed("c0"));
              response.onError(Status.UNAVAILABLE.asRuntimeException());
            },
            response -> {
              response.onNext(subscribed("c0"));
              response.onNext(notification("e1", 1, "c1"));
            }));
    SubscriptionRequest fromStart =
        SubscriptionRequest.builder().source("user", "octocat").startEarliest().build();
    try (Subscription subscription = client.subscribe(fromStart)) {
      assertEquals("e1", ((Notification) next(subscription)).id());
    }
    assertTrue(requests.get(0).getStart().getEarliest());
    assertFalse(requests.get(1).hasStart(), "start and resume_cursor exclude each other");
    assertEquals("c0", requests.get(1).getResumeCursor());
  }

  @Test
  void theStreamIsLiveWhenSubscribeReturnsAndCarriesTheFirstCursor() {
    script(
        List.of(
            response -> {
              response.onNext(
                  SubscribeResponse.newBuilder()
                      .setSubscribed(
                          Subscribed.newBuilder().setCursor("c0").addChannels("events:user:*"))
                      .build());
            }));
    try (Subscription subscription = client.subscribe(USERS)) {
      assertEquals("c0", subscription.cursor());
      assertEquals(List.of("events:user:*"), subscription.channels());
    }
  }

  @Test
  void aRefusalIsNotResumedAndFailsSubscribe() {
    script(
        List.of(
            response ->
                response.onError(
                    Status.UNAUTHENTICATED.withDescription("missing token").asRuntimeException())));
    assertThrows(UnauthenticatedException.class, () -> client.subscribe(USERS));
    assertEquals(1, requests.size());
  }

  @Test
  void theFirstSubscribeIsNotRetried() {
    script(
        List.of(
            response -> response.onError(Status.UNAVAILABLE.asRuntimeException()),
            response -> response.onNext(subscribed("c0"))));
    assertThrows(UnavailableException.class, () -> client.subscribe(USERS));
    assertEquals(1, requests.size());
  }

  @Test
  void subscribeGivesUpWhenTheSidecarDoesNotConfirmInTime() throws Exception {
    script(List.of(response -> {})); // Accepts the call, never confirms it.
    try (DualstreamClient impatient =
        DualstreamClient.builder(sidecar.target())
            .reconnectPolicy(QUICK)
            .deadline(Duration.ofMillis(500))
            .build()) {
      assertThrows(DeadlineExceededException.class, () -> impatient.subscribe(USERS));
    }
  }

  @Test
  void withPolicyCloseABrokenStreamIsReportedUnlessResumingIsAskedFor() {
    List<Script> breakOnce =
        List.of(
            response -> {
              response.onNext(subscribed("c0"));
              response.onError(Status.UNAVAILABLE.withDescription("redis").asRuntimeException());
            },
            response -> {
              response.onNext(subscribed("c0"));
              response.onNext(notification("e1", 1, "c1"));
            });
    SubscriptionRequest.Builder close =
        SubscriptionRequest.builder().allOf("user").policy(SlowConsumerPolicy.CLOSE);
    script(breakOnce);
    try (Subscription subscription = client.subscribe(close.build())) {
      assertThrows(UnavailableException.class, subscription::next);
    }
    assertEquals(1, requests.size());
    script(breakOnce);
    try (Subscription subscription = client.subscribe(close.autoResume(true).build())) {
      assertEquals("e1", ((Notification) next(subscription)).id());
    }
    assertEquals(3, requests.size());
  }

  @Test
  void aFailureThatResumingCannotMendComesAfterWhatWasReceivedBeforeIt() {
    script(
        List.of(
            response -> {
              response.onNext(subscribed("c0"));
              response.onNext(notification("e1", 1, "c1"));
              response.onError(
                  Status.RESOURCE_EXHAUSTED
                      .withDescription("the stream fell behind")
                      .asRuntimeException());
            }));
    Subscription subscription =
        client.subscribe(
            SubscriptionRequest.builder().allOf("user").policy(SlowConsumerPolicy.CLOSE).build());
    assertEquals("e1", ((Notification) next(subscription)).id());
    ResourceExhaustedException failure =
        assertThrows(ResourceExhaustedException.class, subscription::next);
    assertEquals("the stream fell behind", failure.details());
    assertThrows(ResourceExhaustedException.class, subscription::hasNext, "the failure stays");
    subscription.close();
    assertEquals(1, requests.size());
  }

  @Test
  void theReconnectPolicyGivesUp() throws Exception {
    script(
        List.of(
            response -> {
              response.onNext(subscribed("c0"));
              response.onError(Status.UNAVAILABLE.asRuntimeException());
            },
            response ->
                response.onError(
                    Status.UNAVAILABLE.withDescription("still down").asRuntimeException())));
    ReconnectPolicy shortLived =
        ReconnectPolicy.giveUpAfter(
            new Backoff(Duration.ofMillis(10), Duration.ofMillis(20)), Duration.ofMillis(200));
    try (DualstreamClient client =
            DualstreamClient.builder(sidecar.target()).reconnectPolicy(shortLived).build();
        Subscription subscription = client.subscribe(USERS)) {
      UnavailableException failure = assertThrows(UnavailableException.class, subscription::next);
      assertEquals("still down", failure.details());
    }
    assertTrue(requests.size() >= 2);
  }

  @Test
  void neverReconnectFailsAtTheFirstBreak() throws Exception {
    script(
        List.of(
            response -> {
              response.onNext(subscribed("c0"));
              response.onError(Status.UNAVAILABLE.asRuntimeException());
            }));
    try (DualstreamClient client =
            DualstreamClient.builder(sidecar.target())
                .reconnectPolicy(ReconnectPolicy.NEVER)
                .build();
        Subscription subscription = client.subscribe(USERS)) {
      assertThrows(UnavailableException.class, subscription::next);
    }
    assertEquals(1, requests.size());
  }

  @Test
  void aNotificationBatchIsUnpackedInOrderWithEachCursor() {
    script(
        List.of(
            response -> {
              response.onNext(subscribed("c0"));
              NotificationBatch.Builder batch = NotificationBatch.newBuilder();
              for (int i = 1; i <= 3; i++) {
                batch.addNotifications(notification("e" + i, i, "c" + i).getNotification());
              }
              response.onNext(SubscribeResponse.newBuilder().setNotifications(batch).build());
              response.onNext(notification("e4", 4, "c4"));
            }));
    SubscriptionRequest batched =
        SubscriptionRequest.builder().allOf("user").maxNotificationsPerMessage(100).build();
    try (Subscription subscription = client.subscribe(batched)) {
      for (int i = 1; i <= 4; i++) {
        Notification notification = (Notification) next(subscription);
        assertEquals("e" + i, notification.id());
        assertEquals("c" + i, subscription.cursor());
      }
    }
    assertEquals(100, requests.get(0).getMaxNotificationsPerMessage());
  }

  @Test
  void gapsAndTraceContextReachTheApplication() {
    Timestamp since = Timestamp.newBuilder().setSeconds(1_700_000_000).build();
    script(
        List.of(
            response -> {
              response.onNext(subscribed("c0"));
              response.onNext(
                  SubscribeResponse.newBuilder()
                      .setGap(
                          dev.dualstream.v1.Gap.newBuilder()
                              .setReason(dev.dualstream.v1.GapReason.GAP_REASON_SLOW_CONSUMER)
                              .setMissed(7)
                              .setCursor("c0")
                              .setSince(since)
                              .setUntil(since))
                      .build());
              response.onNext(
                  SubscribeResponse.newBuilder()
                      .setNotification(
                          notification("e1", 8, "c8").getNotification().toBuilder()
                              .setTraceparent(
                                  "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                              .setTracestate("vendor=1"))
                      .build());
            }));
    try (Subscription subscription = client.subscribe(USERS)) {
      Gap gap = assertInstanceOf(Gap.class, next(subscription));
      assertEquals(GapReason.SLOW_CONSUMER, gap.reason());
      assertEquals(7, gap.missed());
      assertEquals("c0", gap.cursor());
      Notification notification = assertInstanceOf(Notification.class, next(subscription));
      assertEquals(
          "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", notification.traceparent());
      assertEquals("vendor=1", notification.tracestate());
    }
  }

  @Test
  void closeFromAnotherThreadEndsABlockedIterationAndCancelsTheCall() throws Exception {
    CountDownLatch cancelled = new CountDownLatch(1);
    script(
        List.of(
            response -> {
              ((ServerCallStreamObserver<SubscribeResponse>) response)
                  .setOnCancelHandler(cancelled::countDown);
              response.onNext(subscribed("c0"));
            }));
    Subscription subscription = client.subscribe(USERS);
    CompletableFuture<Boolean> blocked = CompletableFuture.supplyAsync(subscription::hasNext);
    subscription.close();
    assertFalse(blocked.get(30, TimeUnit.SECONDS));
    assertTrue(cancelled.await(30, TimeUnit.SECONDS), "the server saw no cancellation");
  }

  @Test
  void closingTheClientEndsItsSubscriptions() throws Exception {
    script(List.of(response -> response.onNext(subscribed("c0"))));
    Subscription subscription = client.subscribe(USERS);
    client.close();
    assertFalse(subscription.hasNext());
  }

  @Test
  void aSlowReaderHoldsBackTheServerInsteadOfBufferingWithoutBound() throws Exception {
    int total = 50_000;
    AtomicLong sent = new AtomicLong();
    CountDownLatch allSent = new CountDownLatch(1);
    sidecar.subscribe =
        (request, plain) -> {
          ServerCallStreamObserver<SubscribeResponse> response =
              (ServerCallStreamObserver<SubscribeResponse>) plain;
          response.onNext(subscribed("c0"));
          // Sends only while the transport is ready: flow control decides the pace.
          response.setOnReadyHandler(
              () -> {
                while (response.isReady() && sent.get() < total) {
                  long offset = sent.incrementAndGet();
                  response.onNext(notification("e" + offset, offset, "c" + offset));
                }
                if (sent.get() == total) {
                  allSent.countDown();
                }
              });
        };
    try (Subscription subscription = client.subscribe(USERS)) {
      // The reader takes nothing for a while: the server must stall far below the total.
      assertFalse(allSent.await(2, TimeUnit.SECONDS));
      long stalledAt = sent.get();
      assertTrue(stalledAt < total / 2, "sent " + stalledAt + " to a reader that read none");
      for (long offset = 1; offset <= total; offset++) {
        Notification notification = (Notification) next(subscription);
        assertEquals(offset, notification.offset());
      }
      assertTrue(allSent.await(30, TimeUnit.SECONDS));
    }
  }

  private static StreamMessage next(Subscription subscription) {
    return subscription.poll(WAIT).orElseThrow(() -> new AssertionError("no message in " + WAIT));
  }

  static SubscribeResponse subscribed(String cursor) {
    return SubscribeResponse.newBuilder()
        .setSubscribed(Subscribed.newBuilder().setCursor(cursor))
        .build();
  }

  static SubscribeResponse notification(String id, long offset, String cursor) {
    return SubscribeResponse.newBuilder()
        .setNotification(
            dev.dualstream.v1.Notification.newBuilder()
                .setId(id)
                .setType("user.starred")
                .setSourceType("user")
                .setSourceId("octocat")
                .setTopic("events")
                .setOffset(offset)
                .setCursor(cursor))
        .build();
  }

  static SubscribeResponse replayed(String id, long offset, String cursor) {
    SubscribeResponse live = notification(id, offset, cursor);
    return live.toBuilder()
        .setNotification(live.getNotification().toBuilder().setReplayed(true))
        .build();
  }

  static SubscribeResponse caughtUp(long replayed, String cursor) {
    return SubscribeResponse.newBuilder()
        .setCaughtUp(
            dev.dualstream.v1.CaughtUp.newBuilder().setReplayed(replayed).setCursor(cursor))
        .build();
  }
}
