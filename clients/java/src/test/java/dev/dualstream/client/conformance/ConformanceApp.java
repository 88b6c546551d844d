package dev.dualstream.client.conformance;

import dev.dualstream.client.Backoff;
import dev.dualstream.client.CaughtUp;
import dev.dualstream.client.DualstreamClient;
import dev.dualstream.client.DualstreamException;
import dev.dualstream.client.EventInput;
import dev.dualstream.client.Gap;
import dev.dualstream.client.Notification;
import dev.dualstream.client.PublishResult;
import dev.dualstream.client.RetryPolicy;
import dev.dualstream.client.SlowConsumerPolicy;
import dev.dualstream.client.StreamMessage;
import dev.dualstream.client.Subscription;
import dev.dualstream.client.SubscriptionRequest;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ConcurrentSkipListMap;
import java.util.concurrent.Semaphore;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The conformance app every client ships for the cross-language tests (tests/clients/):
 *
 * <pre>
 * publish --target T [--token X] --source TYPE:ID --type TYPE --count N [--id-prefix P]
 * subscribe --target T [--token X] --source TYPE:ID... [--resume CURSOR] [--limit N]
 *           [--policy gap|replay|close]
 * overload --target T [--token X] --source TYPE:ID --count N --concurrency C
 * </pre>
 *
 * {@code publish} and {@code subscribe} print one JSON line per acknowledged event or per stream
 * message, flushed at once, and rely on the client's own retry and automatic resume. {@code
 * overload} publishes without retry and with the default throttle, and prints one line counting the
 * outcomes.
 */
public final class ConformanceApp {
  private final PrintStream out =
      new PrintStream(System.out, true, StandardCharsets.UTF_8); // autoflush per line

  private ConformanceApp() {}

  public static void main(String[] args) throws InterruptedException {
    if (args.length == 0) {
      usage("name a command: publish, subscribe or overload");
    }
    Options options = Options.parse(args);
    ConformanceApp app = new ConformanceApp();
    // SIGTERM ends a run without --limit, and that is a success: the hook turns the JVM's
    // exit into status 0 unless main itself is exiting.
    Thread exitOnTerm = new Thread(() -> Runtime.getRuntime().halt(0), "sigterm");
    Runtime.getRuntime().addShutdownHook(exitOnTerm);
    int status = 0;
    try {
      switch (args[0]) {
        case "publish" -> app.publish(options);
        case "subscribe" -> app.subscribe(options);
        case "overload" -> app.overload(options);
        default -> usage("unknown command " + args[0]);
      }
    } catch (DualstreamException e) {
      System.err.println("conformance app: " + e.getMessage());
      status = 1;
    }
    Runtime.getRuntime().removeShutdownHook(exitOnTerm);
    System.exit(status);
  }

  /** Publishes one event at a time, each acknowledged before the next is sent. */
  private void publish(Options options) {
    String[] source = splitSource(options.single("source"));
    String type = options.optional("type", "conformance.published");
    int count = Integer.parseInt(options.single("count"));
    String idPrefix = options.optional("id-prefix", "");
    try (DualstreamClient client = connect(options)) {
      for (int i = 0; i < count; i++) {
        EventInput.Builder event = EventInput.builder(type, source[0], source[1]);
        if (!idPrefix.isEmpty()) {
          event.id(idPrefix + "-" + i);
        }
        PublishResult result = client.publish(event.build());
        Map<String, Object> line = new LinkedHashMap<>();
        line.put("id", result.id());
        line.put("source_type", source[0]);
        line.put("source_id", source[1]);
        line.put("partition", result.partition());
        line.put("offset", result.offset());
        print(line);
      }
    }
  }

  private void subscribe(Options options) {
    SubscriptionRequest.Builder request = SubscriptionRequest.builder();
    for (String source : options.all("source")) {
      String[] parts = splitSource(source);
      request.source(parts[0], parts[1]);
    }
    request.resumeFrom(options.optional("resume", ""));
    String policy = options.optional("policy", "gap");
    if (!List.of("gap", "replay", "close").contains(policy)) {
      usage("--policy is gap, replay or close, not " + policy);
    }
    request.policy(SlowConsumerPolicy.valueOf(policy.toUpperCase(Locale.ROOT)));
    long limit = Long.parseLong(options.optional("limit", "-1"));
    try (DualstreamClient client = connect(options);
        Subscription subscription = client.subscribe(request.build())) {
      Map<String, Object> subscribed = new LinkedHashMap<>();
      subscribed.put("kind", "subscribed");
      subscribed.put("cursor", subscription.cursor());
      print(subscribed);
      long notifications = 0;
      while (limit < 0 || notifications < limit) {
        StreamMessage message = subscription.next();
        if (message instanceof Notification notification) {
          notifications++;
          print(notificationLine(notification));
        } else if (message instanceof Gap gap) {
          Map<String, Object> line = new LinkedHashMap<>();
          line.put("kind", "gap");
          line.put("reason", gap.reason().name());
          line.put("missed", gap.missed());
          line.put("cursor", gap.cursor());
          print(line);
        } else if (message instanceof CaughtUp caughtUp) {
          Map<String, Object> line = new LinkedHashMap<>();
          line.put("kind", "caught_up");
          line.put("replayed", caughtUp.replayed());
          line.put("cursor", caughtUp.cursor());
          print(line);
        }
      }
    }
  }

  /**
   * Publishes {@code count} events with {@code concurrency} calls in flight, with no retry and the
   * client's default throttle, and counts how each ended: acknowledged, refused by the sidecar as
   * past capacity, held back by the throttle, or any other error by its code.
   */
  private void overload(Options options) throws InterruptedException {
    String[] source = splitSource(options.single("source"));
    int count = Integer.parseInt(options.single("count"));
    int concurrency = Integer.parseInt(options.single("concurrency"));
    if (count < 0 || concurrency < 1) {
      usage("--count must be at least 0 and --concurrency at least 1");
    }
    AtomicInteger ok = new AtomicInteger();
    AtomicInteger refused = new AtomicInteger();
    AtomicInteger throttled = new AtomicInteger();
    Map<String, Integer> errors = new ConcurrentSkipListMap<>();
    Semaphore inFlight = new Semaphore(concurrency);
    try (DualstreamClient client = clientBuilder(options).retryPolicy(RetryPolicy.NONE).build()) {
      for (int i = 0; i < count; i++) {
        inFlight.acquire();
        client
            .publishAsync(EventInput.of("overload", source[0], source[1], new byte[0]))
            .whenComplete(
                (result, failure) -> {
                  Throwable cause =
                      failure instanceof CompletionException ? failure.getCause() : failure;
                  if (cause == null) {
                    ok.incrementAndGet();
                  } else if (!(cause instanceof DualstreamException error)) {
                    errors.merge(cause.getClass().getName(), 1, Integer::sum);
                  } else if (error.throttled()) {
                    throttled.incrementAndGet();
                  } else if (error.retryAfter().isPresent()) {
                    refused.incrementAndGet();
                  } else {
                    errors.merge(error.code().name(), 1, Integer::sum);
                  }
                  inFlight.release();
                });
      }
      inFlight.acquire(concurrency); // Every call has ended.
    }
    Map<String, Object> line = new LinkedHashMap<>();
    line.put("kind", "overload");
    line.put("ok", ok.get());
    line.put("refused", refused.get());
    line.put("throttled", throttled.get());
    line.put("errors", errors);
    print(line);
  }

  private static Map<String, Object> notificationLine(Notification notification) {
    Map<String, Object> line = new LinkedHashMap<>();
    line.put("kind", "notification");
    line.put("id", notification.id());
    line.put("source_type", notification.sourceType());
    line.put("source_id", notification.sourceId());
    line.put("partition", notification.partition());
    line.put("offset", notification.offset());
    line.put("cursor", notification.cursor());
    line.put("replayed", notification.replayed());
    line.put("traceparent", notification.traceparent());
    return line;
  }

  private static DualstreamClient connect(Options options) {
    return clientBuilder(options).build();
  }

  private static DualstreamClient.Builder clientBuilder(Options options) {
    // The resume test SIGKILLs the sidecar while this runs: the contract asks for a retry
    // budget of at least 60 s per event, so the deadline rather than a count bounds it.
    DualstreamClient.Builder builder =
        DualstreamClient.builder(options.single("target"))
            .deadline(Duration.ofSeconds(90))
            .retryPolicy(
                new RetryPolicy(
                    Integer.MAX_VALUE, new Backoff(Duration.ofMillis(100), Duration.ofSeconds(1))));
    String token = options.optional("token", "");
    if (!token.isEmpty()) {
      builder.token(token);
    }
    return builder;
  }

  private static String[] splitSource(String source) {
    int colon = source.indexOf(':');
    if (colon <= 0 || colon == source.length() - 1) {
      usage("a source is TYPE:ID, not " + source);
    }
    return new String[] {source.substring(0, colon), source.substring(colon + 1)};
  }

  private void print(Map<String, Object> fields) {
    out.println(Json.object(fields));
  }

  private static void usage(String problem) {
    System.err.println("conformance app: " + problem);
    System.exit(2);
  }

  /** {@code --name value} pairs after the command; a name may repeat. */
  private record Options(Map<String, List<String>> values) {
    static Options parse(String[] args) {
      Map<String, List<String>> values = new LinkedHashMap<>();
      for (int i = 1; i < args.length; i += 2) {
        if (!args[i].startsWith("--") || i + 1 >= args.length) {
          usage("expected --name value, got " + args[i]);
        }
        values.computeIfAbsent(args[i].substring(2), name -> new ArrayList<>()).add(args[i + 1]);
      }
      return new Options(values);
    }

    String single(String name) {
      List<String> given = values.get(name);
      if (given == null) {
        usage("--" + name + " is required");
      }
      return given.get(given.size() - 1);
    }

    String optional(String name, String fallback) {
      return values.containsKey(name) ? single(name) : fallback;
    }

    List<String> all(String name) {
      List<String> given = values.get(name);
      if (given == null) {
        usage("--" + name + " is required");
      }
      return given;
    }
  }
}
