package dev.dualstream.client;

import dev.dualstream.v1.GetStatusRequest;
import dev.dualstream.v1.GetStatusResponse;
import dev.dualstream.v1.PublishBatchRequest;
import dev.dualstream.v1.PublishBatchResponse;
import dev.dualstream.v1.PublishRequest;
import io.grpc.CallCredentials;
import io.grpc.ChannelCredentials;
import io.grpc.ClientInterceptor;
import io.grpc.ClientInterceptors;
import io.grpc.Deadline;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.TlsChannelCredentials;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import io.grpc.netty.shaded.io.netty.channel.ChannelOption;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.Objects;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executor;
import java.util.concurrent.Flow;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Function;
import java.util.function.Supplier;

/**
 * A client of the dualstream sidecar: publish events durably, subscribe to their notifications.
 * Thread-safe; make one per sidecar and share it. Close it to release its connection (and end its
 * open subscriptions).
 *
 * <pre>{@code
 * try (DualstreamClient client = DualstreamClient.builder("127.0.0.1:50051").build()) {
 *   PublishResult result = client.publish(EventInput.of("user.starred", "user", "octocat", data));
 *   try (Subscription subscription =
 *       client.subscribe(SubscriptionRequest.builder().source("user", "octocat").build())) {
 *     subscription.forEachRemaining(System.out::println);
 *   }
 * }
 * }</pre>
 */
public final class DualstreamClient implements AutoCloseable {
  private static final AtomicInteger SUBSCRIPTION_THREADS = new AtomicInteger();

  private final ManagedChannel channel;
  private final RpcCaller caller;
  private final Duration deadline;
  private final Retrier retrier;
  private final Throttle throttle;
  private final ReconnectPolicy reconnectPolicy;
  private final int subscriptionBuffer;
  private final Executor subscriptionExecutor;
  private final Set<ResumingStream> openStreams = ConcurrentHashMap.newKeySet();
  private volatile boolean closed;

  private DualstreamClient(Builder builder, ManagedChannel channel) {
    this.channel = channel;
    this.caller =
        new RpcCaller(
            ClientInterceptors.intercept(channel, builder.interceptors),
            builder.token == null ? null : new BearerToken(builder.token));
    this.deadline = builder.deadline;
    this.retrier = new Retrier(builder.retryPolicy, this::reconnectNow);
    this.throttle = new Throttle(builder.throttlePolicy);
    this.reconnectPolicy = builder.reconnectPolicy;
    this.subscriptionBuffer = builder.subscriptionBuffer;
    this.subscriptionExecutor = builder.subscriptionExecutor;
  }

  /**
   * A builder for a client of the sidecar at {@code target}: {@code host:port} or {@code
   * unix:/path/to.sock} (any gRPC target URI works, such as {@code dns:///host:port}).
   */
  public static Builder builder(String target) {
    return new Builder(target);
  }

  /** Publishes one event and waits until Kafka acknowledged it. */
  public PublishResult publish(EventInput event) {
    return await(publishAsync(event));
  }

  /**
   * Publishes one event. An event without an id gets a UUIDv7 first, so a retry after {@code
   * UNAVAILABLE} or a capacity refusal (as the {@link RetryPolicy} allows, within the deadline)
   * sends the same id. Every attempt passes the client's {@link ThrottlePolicy throttle}. The
   * future fails with a {@link DualstreamException}.
   */
  public CompletableFuture<PublishResult> publishAsync(EventInput event) {
    PublishRequest request =
        PublishRequest.newBuilder().setEvent(Convert.event(withId(event))).build();
    Deadline callDeadline = Deadline.after(deadline.toNanos(), TimeUnit.NANOSECONDS);
    return map(
        retrier.run(
            callDeadline,
            attempt ->
                throttle.run(
                    () -> caller.unary(EventServiceMethods.PUBLISH, request, callDeadline)),
            response -> Optional.empty()),
        Convert::publishResult);
  }

  /**
   * Publishes several events in one call and waits for every outcome, in request order. One invalid
   * event rejects the whole batch ({@link InvalidArgumentException} naming it, for example {@code
   * events[3].type}) before anything is written.
   */
  public List<BatchItemResult> publishBatch(List<EventInput> events) {
    return await(publishBatchAsync(events));
  }

  /**
   * Publishes several events in one call. Events without an id get a UUIDv7 first. Events that
   * Kafka did not acknowledge with {@code UNAVAILABLE} are sent again (alone, with the same ids) as
   * the {@link RetryPolicy} allows, and so is a call refused as a whole for capacity (nothing of it
   * was written); the results keep the request's order. If such a retry fails as a whole, the
   * events already acknowledged keep their results and the rest carry that failure; only a batch of
   * which nothing was acknowledged fails with an exception. Every attempt passes the client's
   * {@link ThrottlePolicy throttle}.
   */
  public CompletableFuture<List<BatchItemResult>> publishBatchAsync(List<EventInput> events) {
    List<dev.dualstream.v1.Event> wire = new ArrayList<>(events.size());
    for (EventInput event : events) {
      wire.add(Convert.event(withId(event)));
    }
    BatchItemResult[] results = new BatchItemResult[wire.size()];
    Deadline callDeadline = Deadline.after(deadline.toNanos(), TimeUnit.NANOSECONDS);
    return map(
        retrier.run(
            callDeadline,
            attempt -> publishUnsettled(wire, results, callDeadline),
            DualstreamClient::retryableFailure),
        Arrays::asList);
  }

  /** The sidecar's detailed status (the protobuf message: see {@code GetStatusResponse}). */
  public GetStatusResponse status() {
    Deadline callDeadline = Deadline.after(deadline.toNanos(), TimeUnit.NANOSECONDS);
    return await(
        caller.unary(
            EventServiceMethods.GET_STATUS, GetStatusRequest.getDefaultInstance(), callDeadline));
  }

  /**
   * Opens a subscription and waits until the sidecar confirmed it live (at most the client's
   * deadline), so that every matching event published after this returns is delivered.
   *
   * @throws DualstreamException the sidecar refused the subscription (UNAUTHENTICATED,
   *     INVALID_ARGUMENT, RESOURCE_EXHAUSTED) or did not confirm it in time
   */
  public Subscription subscribe(SubscriptionRequest request) {
    ResumingStream stream = openStream(request);
    try {
      stream.awaitLive(deadline);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw Errors.forCode(Status.Code.CANCELLED, "interrupted while subscribing", e);
    }
    return new Subscription(stream);
  }

  /**
   * The subscription as a {@link Flow.Publisher}: each {@code subscribe} on it opens its own
   * resuming stream, delivered on the builder's subscription executor (by default a daemon thread
   * per subscriber) as the subscriber requests. {@code onError} reports what {@link #subscribe} or
   * {@link Subscription#next()} would throw; cancel to end it.
   */
  public Flow.Publisher<StreamMessage> publisher(SubscriptionRequest request) {
    Objects.requireNonNull(request, "request");
    return new SubscriptionPublisher(() -> openStream(request), deadline, subscriptionExecutor);
  }

  /** Ends every open subscription and closes the connection; idempotent. */
  @Override
  public void close() {
    closed = true;
    for (ResumingStream stream : List.copyOf(openStreams)) {
      stream.close();
    }
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  private ResumingStream openStream(SubscriptionRequest request) {
    if (closed) {
      throw Errors.forCode(Status.Code.CANCELLED, "the client is closed", null);
    }
    ResumingStream stream =
        new ResumingStream(
            caller,
            request,
            reconnectPolicy,
            subscriptionBuffer,
            this::reconnectNow,
            openStreams::remove);
    openStreams.add(stream);
    return stream;
  }

  /**
   * Sends the events not settled yet and settles those the sidecar answered. When a retry fails as
   * a whole, the events an earlier attempt settled keep their results and the others carry the
   * failure: the caller learns what was published rather than only the last error.
   */
  private CompletableFuture<BatchItemResult[]> publishUnsettled(
      List<dev.dualstream.v1.Event> wire, BatchItemResult[] results, Deadline callDeadline) {
    List<Integer> pending = retryableIndexes(results);
    PublishBatchRequest.Builder request = PublishBatchRequest.newBuilder();
    for (int index : pending) {
      request.addEvents(wire.get(index));
    }
    Supplier<CompletableFuture<PublishBatchResponse>> call =
        () -> caller.unary(EventServiceMethods.PUBLISH_BATCH, request.build(), callDeadline);
    return throttle
        .run(call)
        .handle(
            (PublishBatchResponse response, Throwable failure) -> {
              if (failure != null) {
                DualstreamException error = Errors.translate(failure);
                if (pending.size() == results.length) {
                  throw error; // Nothing answered yet: the batch failed as a whole.
                }
                for (int index : pending) {
                  results[index] = BatchItemResult.failure(wire.get(index).getId(), error);
                }
                return results;
              }
              if (response.getResultsCount() != pending.size()) {
                throw Errors.forCode(
                    Status.Code.INTERNAL,
                    "the sidecar answered "
                        + response.getResultsCount()
                        + " results for "
                        + pending.size()
                        + " events",
                    null);
              }
              for (int i = 0; i < pending.size(); i++) {
                results[pending.get(i)] = Convert.batchItemResult(response.getResults(i));
              }
              return results;
            });
  }

  /**
   * The events with no result yet, or whose failure a retry can mend: UNAVAILABLE from Kafka, or a
   * capacity refusal of the (retry) call that carried them.
   */
  private static List<Integer> retryableIndexes(BatchItemResult[] results) {
    List<Integer> indexes = new ArrayList<>();
    for (int i = 0; i < results.length; i++) {
      BatchItemResult result = results[i];
      if (result == null || result.error().map(Retrier::retryable).orElse(false)) {
        indexes.add(i);
      }
    }
    return indexes;
  }

  /** A failure of the batch's results that a retry can mend, the one with the longest hint. */
  private static Optional<DualstreamException> retryableFailure(BatchItemResult[] results) {
    return Arrays.stream(results)
        .flatMap(result -> result.error().stream())
        .filter(Retrier::retryable)
        .max(Comparator.comparing(error -> error.retryAfter().orElse(Duration.ZERO)));
  }

  private static EventInput withId(EventInput event) {
    return event.id().isEmpty() ? event.withId(UuidV7.next().toString()) : event;
  }

  /** Makes a channel waiting out gRPC's connection backoff try to connect now. */
  private void reconnectNow() {
    channel.resetConnectBackoff();
  }

  /** {@code source.thenApply(function)}, whose cancellation also cancels {@code source}. */
  private static <T, R> CompletableFuture<R> map(
      CompletableFuture<T> source, Function<? super T, ? extends R> function) {
    CompletableFuture<R> mapped = source.thenApply(function);
    mapped.whenComplete(
        (value, failure) -> {
          if (mapped.isCancelled()) {
            source.cancel(false);
          }
        });
    return mapped;
  }

  private static <T> T await(CompletableFuture<T> future) {
    try {
      return future.get();
    } catch (ExecutionException e) {
      throw Errors.translate(e.getCause());
    } catch (InterruptedException e) {
      future.cancel(true);
      Thread.currentThread().interrupt();
      throw Errors.forCode(Status.Code.CANCELLED, "interrupted while waiting for the call", e);
    }
  }

  /** {@code authorization: Bearer <token>} on every call. */
  private static final class BearerToken extends CallCredentials {
    private static final Metadata.Key<String> AUTHORIZATION =
        Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    private final Metadata headers = new Metadata();

    BearerToken(String token) {
      headers.put(AUTHORIZATION, "Bearer " + token);
    }

    @Override
    public void applyRequestMetadata(
        RequestInfo requestInfo, Executor appExecutor, MetadataApplier applier) {
      Metadata copy = new Metadata();
      copy.merge(headers);
      applier.apply(copy);
    }
  }

  /** Builds a {@link DualstreamClient}. */
  public static final class Builder {
    private final String target;
    private String token;
    private ChannelCredentials credentials = InsecureChannelCredentials.create();
    private String authority;
    private Duration deadline = Duration.ofSeconds(30);
    private RetryPolicy retryPolicy = RetryPolicy.DEFAULT;
    private ThrottlePolicy throttlePolicy = ThrottlePolicy.DEFAULT;
    private ReconnectPolicy reconnectPolicy = ReconnectPolicy.DEFAULT;
    private int subscriptionBuffer = 16;
    private int maxInboundMessageBytes = 16 * 1024 * 1024;
    private final List<ClientInterceptor> interceptors = new ArrayList<>();
    private Executor subscriptionExecutor =
        runnable -> {
          Thread thread =
              new Thread(
                  runnable, "dualstream-subscription-" + SUBSCRIPTION_THREADS.incrementAndGet());
          thread.setDaemon(true);
          thread.start();
        };

    private Builder(String target) {
      this.target = Objects.requireNonNull(target, "target");
    }

    /** Send {@code authorization: Bearer <token>} on every call. */
    public Builder token(String value) {
      this.token = Objects.requireNonNull(value, "token");
      return this;
    }

    /** Use TLS, trusting the system's default roots. */
    public Builder tls() {
      this.credentials = TlsChannelCredentials.create();
      return this;
    }

    /** Use TLS, trusting the certificates of this PEM file. */
    public Builder tlsTrustRoots(Path pemFile) {
      try {
        return tlsTrustRoots(Files.readAllBytes(pemFile));
      } catch (IOException e) {
        throw new UncheckedIOException("cannot read the TLS trust roots " + pemFile, e);
      }
    }

    /** Use TLS, trusting these PEM certificates. */
    public Builder tlsTrustRoots(byte[] pem) {
      try {
        this.credentials =
            TlsChannelCredentials.newBuilder().trustManager(new ByteArrayInputStream(pem)).build();
      } catch (IOException e) {
        throw new UncheckedIOException("the TLS trust roots are not valid PEM", e);
      }
      return this;
    }

    /** The name to verify the server's certificate against, when not the target's host. */
    public Builder authority(String value) {
      this.authority = Objects.requireNonNull(value, "authority");
      return this;
    }

    /**
     * The deadline of each publish (retries included) and status call, and how long {@code
     * subscribe} waits for the stream to be live. 30 s by default.
     */
    public Builder deadline(Duration value) {
      if (value.isNegative() || value.isZero()) {
        throw new IllegalArgumentException("the deadline must be positive, not " + value);
      }
      this.deadline = value;
      return this;
    }

    /**
     * How publishes retry {@code UNAVAILABLE} and capacity refusals ({@link RetryPolicy#DEFAULT}).
     */
    public Builder retryPolicy(RetryPolicy value) {
      this.retryPolicy = Objects.requireNonNull(value, "retryPolicy");
      return this;
    }

    /**
     * How the client holds publishes back while the sidecar refuses them as past its capacity
     * ({@link ThrottlePolicy#DEFAULT}; {@link ThrottlePolicy#NONE} sends every attempt). One
     * throttle per client, shared by all its calls.
     */
    public Builder throttlePolicy(ThrottlePolicy value) {
      this.throttlePolicy = Objects.requireNonNull(value, "throttlePolicy");
      return this;
    }

    /** How subscriptions resume a broken stream ({@link ReconnectPolicy#DEFAULT}). */
    public Builder reconnectPolicy(ReconnectPolicy value) {
      this.reconnectPolicy = Objects.requireNonNull(value, "reconnectPolicy");
      return this;
    }

    /**
     * How many stream messages a subscription buffers ahead of its reader (16). The sidecar sends
     * no more until the reader takes some: a slow reader slows its stream (and, past the sidecar's
     * own buffer, gets the subscription's slow-consumer policy), never this process's memory.
     */
    public Builder subscriptionBuffer(int messages) {
      if (messages < 1) {
        throw new IllegalArgumentException("the subscription buffer needs at least 1 message");
      }
      this.subscriptionBuffer = messages;
      return this;
    }

    /** The largest message the client accepts (16 MiB): a batch of hydrated notifications. */
    public Builder maxInboundMessageBytes(int bytes) {
      this.maxInboundMessageBytes = bytes;
      return this;
    }

    /**
     * Runs every call through these gRPC interceptors (the last added runs first), for example
     * OpenTelemetry's, which sends the current trace context as {@code traceparent}: the sidecar
     * continues that trace and hands it on to the event's notifications.
     */
    public Builder intercept(ClientInterceptor... values) {
      interceptors.addAll(List.of(values));
      return this;
    }

    /** Where {@link DualstreamClient#publisher} delivers; by default a thread per subscriber. */
    public Builder subscriptionExecutor(Executor executor) {
      this.subscriptionExecutor = Objects.requireNonNull(executor, "executor");
      return this;
    }

    public DualstreamClient build() {
      ManagedChannelBuilder<?> channel =
          Grpc.newChannelBuilder(target, credentials)
              .userAgent("dualstream-java")
              .maxInboundMessageSize(maxInboundMessageBytes);
      if (authority != null) {
        channel.overrideAuthority(authority);
      }
      if (target.startsWith("unix:") && channel instanceof NettyChannelBuilder netty) {
        // gRPC asks every socket for TCP keepalive; a unix socket has none, and Netty would
        // log a warning for each connection.
        netty.withOption(ChannelOption.SO_KEEPALIVE, null);
      }
      return new DualstreamClient(this, channel.build());
    }
  }
}
