package dev.dualstream.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ForwardingClientCall.SimpleForwardingClientCall;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Flow;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The client against real sidecars, Kafka and Redis: the ones {@code python -m stack.localstack
 * with-stack} starts and names in {@code DUALSTREAM_TEST_*} (see the Makefile's java-test).
 */
@Tag("integration")
class LiveSidecarTest {
  private static final Duration WAIT = Duration.ofSeconds(60);

  private DualstreamClient client;

  /** A source type of this test alone, so other tests' events never show up. */
  private String sourceType;

  @BeforeEach
  void connect() {
    client = DualstreamClient.builder(env("DUALSTREAM_TEST_TARGET")).build();
    sourceType = "java" + Long.toHexString(ThreadLocalRandom.current().nextLong() >>> 16);
  }

  @AfterEach
  void close() {
    client.close();
  }

  @Test
  void publishReturnsWhereKafkaStoredTheEvent() {
    EventInput event =
        EventInput.builder("user.starred", sourceType, "octocat")
            .json("{\"repo\":\"hello\"}")
            .build();
    PublishResult result = client.publish(event);
    assertEquals(7, java.util.UUID.fromString(result.id()).version(), "a client-side UUIDv7");
    assertEquals("events", result.topic());
    assertTrue(result.partition() >= 0 && result.offset() >= 0, result.toString());
    assertTrue(result.notified());

    PublishResult again = client.publishAsync(event.withId(result.id() + "-b")).join();
    assertEquals(result.partition(), again.partition(), "one source, one partition");
    assertTrue(again.offset() > result.offset());
  }

  @Test
  void aBatchWithOneBadEventIsRefusedNamingTheFieldAndWritesNothing() {
    String before;
    try (Subscription probe = client.subscribe(only(sourceType, "batch"))) {
      before = probe.cursor();
    }
    List<EventInput> batch =
        List.of(
            EventInput.of("order.created", sourceType, "batch", new byte[0]),
            EventInput.of("", sourceType, "batch", new byte[0]),
            EventInput.of("order.created", sourceType, "batch", new byte[0]));
    InvalidArgumentException refused =
        assertThrows(InvalidArgumentException.class, () -> client.publishBatch(batch));
    assertEquals("events[1].type", refused.fieldPath());
    assertEquals("is required", refused.problem());

    PublishResult marker =
        client.publish(EventInput.of("order.marker", sourceType, "batch", new byte[0]));
    // Replaying from before the batch finds the marker first: the batch wrote nothing.
    try (Subscription replay =
        client.subscribe(
            SubscriptionRequest.builder().source(sourceType, "batch").resumeFrom(before).build())) {
      Notification first = nextNotification(replay);
      assertEquals(marker.id(), first.id());
      assertTrue(first.replayed());
    }

    List<BatchItemResult> results =
        client.publishBatch(
            List.of(
                EventInput.of("order.created", sourceType, "batch", new byte[0]),
                EventInput.of("order.created", sourceType, "batch", new byte[0])));
    assertEquals(2, results.size());
    assertTrue(results.stream().allMatch(BatchItemResult::isPublished));
    assertEquals(
        results.get(0).published().orElseThrow().offset() + 1,
        results.get(1).published().orElseThrow().offset());
  }

  @Test
  void theAuthSidecarRefusesCallsWithoutTheToken() {
    String target = env("DUALSTREAM_TEST_AUTH_TARGET");
    EventInput event = EventInput.of("user.starred", sourceType, "octocat", new byte[0]);
    try (DualstreamClient anonymous = DualstreamClient.builder(target).build()) {
      UnauthenticatedException refused =
          assertThrows(UnauthenticatedException.class, () -> anonymous.publish(event));
      assertTrue(refused.details().contains("authorization"), refused.details());
      assertThrows(
          UnauthenticatedException.class, () -> anonymous.subscribe(only(sourceType, "octocat")));
    }
    try (DualstreamClient wrong = DualstreamClient.builder(target).token("not-it").build()) {
      assertThrows(UnauthenticatedException.class, () -> wrong.publish(event));
    }
    try (DualstreamClient authorised =
            DualstreamClient.builder(target).token(env("DUALSTREAM_TEST_TOKEN")).build();
        Subscription subscription = authorised.subscribe(only(sourceType, "octocat"))) {
      PublishResult result = authorised.publish(event);
      assertEquals(result.id(), nextNotification(subscription).id());
    }
  }

  @Test
  void aWildcardSubscriptionSeesEverySourceOfItsTypeInOrder() {
    try (Subscription subscription =
        client.subscribe(SubscriptionRequest.builder().allOf(sourceType).build())) {
      Map<String, List<String>> published = new HashMap<>();
      for (int i = 0; i < 6; i++) {
        String sourceId = i % 2 == 0 ? "alice" : "bob";
        PublishResult result =
            client.publish(EventInput.of("user.starred", sourceType, sourceId, new byte[0]));
        published.computeIfAbsent(sourceId, id -> new ArrayList<>()).add(result.id());
      }
      Map<String, List<String>> seen = new HashMap<>();
      for (int i = 0; i < 6; i++) {
        Notification notification = nextNotification(subscription);
        assertEquals(sourceType, notification.sourceType());
        assertFalse(notification.replayed());
        seen.computeIfAbsent(notification.sourceId(), id -> new ArrayList<>())
            .add(notification.id());
      }
      assertEquals(published, seen);
      assertTrue(subscription.channels().stream().anyMatch(channel -> channel.endsWith(":*")));
    }
  }

  @Test
  void aSubscriptionResumedFromACursorReplaysWhatFollowedItThenGoesLive() {
    List<String> ids = new ArrayList<>();
    String cursor;
    try (Subscription first = client.subscribe(only(sourceType, "resume"))) {
      for (int i = 0; i < 3; i++) {
        ids.add(client.publish(EventInput.of("t.x", sourceType, "resume", new byte[0])).id());
      }
      assertEquals(ids.get(0), nextNotification(first).id());
      cursor = first.cursor();
    }
    try (Subscription resumed =
        client.subscribe(
            SubscriptionRequest.builder()
                .source(sourceType, "resume")
                .resumeFrom(cursor)
                .build())) {
      for (String id : ids.subList(1, 3)) {
        Notification notification = nextNotification(resumed);
        assertEquals(id, notification.id());
        assertTrue(notification.replayed());
      }
      CaughtUp caughtUp = assertInstanceOf(CaughtUp.class, next(resumed));
      assertEquals(2, caughtUp.replayed());
      String live = client.publish(EventInput.of("t.x", sourceType, "resume", new byte[0])).id();
      Notification notification = nextNotification(resumed);
      assertEquals(live, notification.id());
      assertFalse(notification.replayed());
    }
  }

  @Test
  void notificationBatchesOfABacklogArriveUnpackedInOrder() {
    String before;
    try (Subscription probe = client.subscribe(only(sourceType, "backlog"))) {
      before = probe.cursor();
    }
    List<EventInput> events = new ArrayList<>();
    for (int i = 0; i < 40; i++) {
      events.add(EventInput.of("t.x", sourceType, "backlog", new byte[0]));
    }
    List<String> ids = client.publishBatch(events).stream().map(BatchItemResult::id).toList();
    SubscriptionRequest batched =
        SubscriptionRequest.builder()
            .source(sourceType, "backlog")
            .resumeFrom(before)
            .maxNotificationsPerMessage(16)
            .build();
    try (Subscription subscription = client.subscribe(batched)) {
      for (String id : ids) {
        assertEquals(id, nextNotification(subscription).id());
      }
      assertInstanceOf(CaughtUp.class, next(subscription));
    }
  }

  @Test
  void includeDataCarriesTheWholeEvent() {
    SubscriptionRequest hydrated =
        SubscriptionRequest.builder().source(sourceType, "data").includeData(true).build();
    try (Subscription subscription = client.subscribe(hydrated)) {
      client.publish(
          EventInput.builder("t.x", sourceType, "data")
              .json("{\"n\":1}")
              .attribute("tenant", "acme")
              .build());
      EventInput event = nextNotification(subscription).event().orElseThrow();
      assertEquals("{\"n\":1}", new String(event.data(), StandardCharsets.UTF_8));
      assertEquals("application/json", event.contentType());
      assertEquals("acme", event.attributes().get("tenant"));
      assertTrue(event.time().isPresent());
    }
  }

  @Test
  void theTraceContextOfThePublisherReachesTheNotification() {
    String traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    String traceparent = "00-" + traceId + "-00f067aa0ba902b7-01";
    try (DualstreamClient traced =
            DualstreamClient.builder(env("DUALSTREAM_TEST_TARGET"))
                .intercept(header("traceparent", traceparent))
                .build();
        Subscription subscription = client.subscribe(only(sourceType, "traced"))) {
      traced.publish(EventInput.of("t.x", sourceType, "traced", new byte[0]));
      Notification notification = nextNotification(subscription);
      assertEquals(traceId, notification.traceparent().split("-")[1], notification.traceparent());
    }
  }

  @Test
  void theFlowPublisherDeliversLiveNotifications() throws Exception {
    PublisherTest.Recorder recorder = new PublisherTest.Recorder();
    Flow.Publisher<StreamMessage> publisher = client.publisher(only(sourceType, "flow"));
    publisher.subscribe(recorder);
    recorder.subscription.request(1);
    // Publish until the stream is live and delivers: the publisher form has no "live" moment
    // to wait for before publishing.
    Object signal = null;
    List<String> ids = new ArrayList<>();
    for (int attempt = 0; attempt < 60 && signal == null; attempt++) {
      ids.add(client.publish(EventInput.of("t.x", sourceType, "flow", new byte[0])).id());
      signal = recorder.signals.poll(1, TimeUnit.SECONDS);
    }
    Notification notification = assertInstanceOf(Notification.class, signal);
    assertTrue(ids.contains(notification.id()));
    recorder.subscription.cancel();
  }

  @Test
  void aDeliveryProcessWithItsOwnHttp2ServesLiveAndReplayedNotifications() {
    List<String> ids = new ArrayList<>();
    String cursor;
    try (DualstreamClient streams =
        DualstreamClient.builder(env("DUALSTREAM_TEST_STREAMS_TARGET")).build()) {
      try (Subscription live = streams.subscribe(only(sourceType, "h2"))) {
        for (int i = 0; i < 3; i++) {
          ids.add(client.publish(EventInput.of("t.x", sourceType, "h2", new byte[0])).id());
        }
        Notification first = nextNotification(live);
        assertEquals(ids.get(0), first.id());
        assertFalse(first.replayed());
        cursor = first.cursor();
        for (String id : ids.subList(1, 3)) {
          assertEquals(id, nextNotification(live).id());
        }
      }
      SubscriptionRequest batched =
          SubscriptionRequest.builder()
              .source(sourceType, "h2")
              .resumeFrom(cursor)
              .maxNotificationsPerMessage(16)
              .build();
      try (Subscription resumed = streams.subscribe(batched)) {
        for (String id : ids.subList(1, 3)) {
          Notification notification = nextNotification(resumed);
          assertEquals(id, notification.id());
          assertTrue(notification.replayed());
        }
        assertInstanceOf(CaughtUp.class, next(resumed));
      }
    }
  }

  @Test
  void aUnixSocketTargetReachesTheSidecar() {
    try (DualstreamClient overUnix =
            DualstreamClient.builder(env("DUALSTREAM_TEST_UNIX_TARGET")).build();
        Subscription subscription = overUnix.subscribe(only(sourceType, "unix"))) {
      PublishResult result =
          overUnix.publish(EventInput.of("t.x", sourceType, "unix", new byte[0]));
      assertEquals(result.id(), nextNotification(subscription).id());
    }
  }

  @Test
  void theReadmeQuickstartRunsAsWritten(@TempDir Path scratch) throws Exception {
    String quickstart = Files.readString(Path.of("examples", "Quickstart.java"));
    String readme = Files.readString(Path.of("..", "..", "README.md"));
    assertTrue(
        readme.contains(quickstart),
        "the README's Java quickstart is examples/Quickstart.java, verbatim");
    // It targets `make up`'s 127.0.0.1:50051; the stack's sidecar stands in.
    Path copy = scratch.resolve("Quickstart.java");
    Files.writeString(copy, quickstart.replace("127.0.0.1:50051", env("DUALSTREAM_TEST_TARGET")));
    String classpath =
        Path.of("target", "classes")
            + ":"
            + Files.readString(Path.of("target", "classpath.txt")).trim();
    Path java = Path.of(System.getProperty("java.home"), "bin", "java");
    Process process =
        new ProcessBuilder(java.toString(), "-cp", classpath, copy.toString())
            .redirectErrorStream(true)
            .start();
    String output = new String(process.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
    assertTrue(process.waitFor(120, TimeUnit.SECONDS), "the quickstart did not end");
    assertEquals(0, process.exitValue(), output);
    String[] lines = output.strip().split("\n");
    assertTrue(lines[0].startsWith("published "), output);
    String id = lines[0].split(" ")[1];
    assertTrue(lines[1].startsWith("notified " + id + " "), output);
  }

  private static SubscriptionRequest only(String sourceType, String sourceId) {
    return SubscriptionRequest.builder().source(sourceType, sourceId).build();
  }

  private static StreamMessage next(Subscription subscription) {
    return subscription.poll(WAIT).orElseThrow(() -> new AssertionError("nothing in " + WAIT));
  }

  private static Notification nextNotification(Subscription subscription) {
    return assertInstanceOf(Notification.class, next(subscription));
  }

  private static ClientInterceptor header(String name, String value) {
    Metadata.Key<String> key = Metadata.Key.of(name, Metadata.ASCII_STRING_MARSHALLER);
    return new ClientInterceptor() {
      @Override
      public <Q, R> ClientCall<Q, R> interceptCall(
          MethodDescriptor<Q, R> method, CallOptions options, Channel next) {
        return new SimpleForwardingClientCall<>(next.newCall(method, options)) {
          @Override
          public void start(Listener<R> listener, Metadata headers) {
            headers.put(key, value);
            super.start(listener, headers);
          }
        };
      }
    };
  }

  private static String env(String name) {
    String value = System.getenv(name);
    if (value == null || value.isEmpty()) {
      throw new IllegalStateException(
          name
              + " is not set: run these tests under the stack (`make java-test`, or"
              + " `python -m stack.localstack with-stack -- mvn test`), or leave them out with"
              + " -DexcludedGroups=integration");
    }
    return value;
  }
}
