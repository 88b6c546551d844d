package dev.dualstream.client;

import dev.dualstream.v1.SubscribeRequest;
import dev.dualstream.v1.SubscribeResponse;
import io.grpc.Status;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.lang.System.Logger.Level;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.List;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;

/**
 * The core of a subscription: one Subscribe call at a time, resumed from the last cursor when it
 * breaks. Pull-based, so the application's pace is gRPC's flow control: each call asks the sidecar
 * for {@code bufferMessages} messages up front and for one more each time the consumer takes one,
 * so at most that many are ever buffered here (the transport's own window aside).
 *
 * <p>One consumer thread calls {@link #awaitLive} and {@link #poll}; {@link #close} may be called
 * from any thread. gRPC's threads only put signals into a queue that flow control bounds.
 */
final class ResumingStream implements AutoCloseable {
  private static final System.Logger LOG = System.getLogger(ResumingStream.class.getName());

  /** What a call's observer tells the consumer. */
  private sealed interface Signal permits Received, Ended, Closed {}

  private record Received(Attempt attempt, SubscribeResponse response) implements Signal {}

  /** The call ended: {@code failure} is null when the sidecar completed the stream. */
  private record Ended(Attempt attempt, Throwable failure) implements Signal {}

  private record Closed() implements Signal {}

  private static final Closed CLOSED = new Closed();

  private final RpcCaller caller;
  private final SubscriptionRequest request;
  private final ReconnectPolicy reconnectPolicy;
  private final Runnable beforeReconnect;
  private final Consumer<ResumingStream> onClose;
  private final int bufferMessages;
  // Room for every requested message, one end of call and the close signal: never full.
  private final BlockingQueue<Signal> signals;
  private final ArrayDeque<StreamMessage> unpacked = new ArrayDeque<>();

  private volatile Attempt current;
  private volatile String cursor;
  private volatile List<String> channels = List.of();
  private volatile boolean closed;
  private volatile int reconnects;

  // Consumer-thread state.
  private boolean live;
  private boolean everLive;
  private int failedAttempts;
  private long brokenSinceNanos;
  private boolean waitingToReconnect;
  private long reconnectAtNanos;
  private DualstreamException failure;

  ResumingStream(
      RpcCaller caller,
      SubscriptionRequest request,
      ReconnectPolicy reconnectPolicy,
      int bufferMessages,
      Runnable beforeReconnect,
      Consumer<ResumingStream> onClose) {
    if (bufferMessages < 1) {
      throw new IllegalArgumentException("bufferMessages must be at least 1");
    }
    this.caller = caller;
    this.request = request;
    this.reconnectPolicy = reconnectPolicy;
    this.bufferMessages = bufferMessages;
    this.beforeReconnect = beforeReconnect;
    this.onClose = onClose;
    this.signals = new ArrayBlockingQueue<>(bufferMessages + 2);
    this.cursor = request.resumeCursor();
  }

  /** The cursor of the last message delivered (or of the stream's start): resume from it. */
  String cursor() {
    return cursor;
  }

  /** The Redis channels and patterns the current (or last) stream listens on. */
  List<String> channels() {
    return channels;
  }

  /** How many times the stream broke and was resumed. */
  int reconnects() {
    return reconnects;
  }

  boolean isClosed() {
    return closed;
  }

  /**
   * Starts the first call and waits for the sidecar's {@code subscribed}: from then on every
   * matching event is delivered. Its failures are not retried: a wrong target, token or request is
   * reported at once.
   *
   * @throws DualstreamException the call failed (UNAVAILABLE, UNAUTHENTICATED, INVALID_ARGUMENT,
   *     ...) or the timeout passed first ({@link DeadlineExceededException}); the stream is then
   *     closed
   */
  void awaitLive(Duration timeout) throws InterruptedException {
    long deadline = System.nanoTime() + timeout.toNanos();
    try {
      while (!live) {
        if (failure != null) {
          throw failure;
        }
        if (closed) {
          throw Errors.forCode(Status.Code.CANCELLED, "the subscription was closed", null);
        }
        if (!step(deadline)) {
          throw new DeadlineExceededException(
              "the sidecar did not confirm the subscription within " + timeout, null);
        }
      }
    } catch (DualstreamException | InterruptedException e) {
      close();
      throw e;
    }
  }

  /**
   * The next message, waiting until {@code deadlineNanos} ({@link System#nanoTime()} based; {@link
   * Long#MAX_VALUE} to wait as long as it takes); null when the deadline passed or the stream was
   * closed ({@link #isClosed()} tells which).
   *
   * @throws DualstreamException the stream failed for good: an error that resuming cannot mend
   *     (UNAUTHENTICATED, RESOURCE_EXHAUSTED of a {@code CLOSE} policy, ...), or the reconnect
   *     policy gave up
   */
  StreamMessage poll(long deadlineNanos) throws InterruptedException {
    while (true) {
      if (closed) {
        return null;
      }
      StreamMessage message = unpacked.poll();
      if (message != null) {
        cursor = message.cursor();
        return message;
      }
      // Only once everything received before the failure was delivered.
      if (failure != null) {
        throw failure;
      }
      if (!step(deadlineNanos)) {
        return null;
      }
    }
  }

  @Override
  public void close() {
    if (closed) {
      return;
    }
    closed = true;
    Attempt attempt = current;
    if (attempt != null) {
      attempt.cancel();
    }
    signals.offer(CLOSED);
    onClose.accept(this);
  }

  /**
   * Handles one signal, or starts a reconnection that is due. False when the deadline passed first.
   */
  private boolean step(long deadlineNanos) throws InterruptedException {
    long now = System.nanoTime();
    if (current == null) {
      if (!waitingToReconnect || now - reconnectAtNanos >= 0) {
        waitingToReconnect = false;
        startAttempt();
      } else {
        // Waiting out the backoff: only a close can arrive meanwhile.
        boolean deadlineFirst =
            deadlineNanos != Long.MAX_VALUE && deadlineNanos - reconnectAtNanos < 0;
        long wakeAt = deadlineFirst ? deadlineNanos : reconnectAtNanos;
        Signal signal = signals.poll(Math.max(0, wakeAt - now), TimeUnit.NANOSECONDS);
        if (signal != null) {
          handle(signal);
          return true;
        }
        return !deadlineFirst;
      }
    }
    Signal signal =
        deadlineNanos == Long.MAX_VALUE
            ? signals.take()
            : signals.poll(Math.max(0, deadlineNanos - now), TimeUnit.NANOSECONDS);
    if (signal == null) {
      return false;
    }
    handle(signal);
    return true;
  }

  private void handle(Signal signal) {
    if (signal instanceof Received received) {
      if (received.attempt() != current) {
        return; // From a call already given up (closed).
      }
      received.attempt().request(1);
      SubscribeResponse response = received.response();
      if (response.hasSubscribed()) {
        onSubscribed(response);
      } else {
        unpacked.addAll(Convert.streamMessages(response));
      }
    } else if (signal instanceof Ended ended) {
      if (ended.attempt() == current) {
        onEnded(ended.failure());
      }
    }
    // Closed: nothing to do; the caller sees `closed`.
  }

  private void onSubscribed(SubscribeResponse response) {
    String subscribedCursor = response.getSubscribed().getCursor();
    if (!subscribedCursor.isEmpty()) {
      cursor = subscribedCursor;
    }
    channels = List.copyOf(response.getSubscribed().getChannelsList());
    if (everLive) {
      reconnects++;
      LOG.log(Level.INFO, "subscription resumed after {0} failed attempt(s)", failedAttempts);
    }
    live = true;
    everLive = true;
    failedAttempts = 0;
    brokenSinceNanos = 0;
  }

  private void onEnded(Throwable callFailure) {
    current = null;
    live = false;
    if (closed) {
      return;
    }
    DualstreamException error =
        callFailure == null
            ? new UnavailableException("the sidecar ended the stream", null)
            : Errors.translate(callFailure);
    long now = System.nanoTime();
    if (failedAttempts == 0) {
      brokenSinceNanos = now;
    }
    failedAttempts++;
    boolean gaveUp =
        reconnectPolicy
            .giveUpAfter()
            .map(limit -> now - brokenSinceNanos >= limit.toNanos())
            .orElse(false);
    // Before the stream was ever live there is nothing to resume: the first call's failure is
    // the caller's to see (no sidecar there, a wrong token).
    if (!everLive || !request.autoResume() || !isResumable(error) || gaveUp) {
      failure = error;
      onClose.accept(this);
      return;
    }
    Duration delay = reconnectPolicy.backoff().delayBefore(failedAttempts);
    waitingToReconnect = true;
    reconnectAtNanos = now + delay.toNanos();
    LOG.log(
        Level.INFO,
        "subscription stream broke ({0}); resuming in {1} ms",
        error.getMessage(),
        delay.toMillis());
  }

  /** Breaks a new call can mend: the sidecar or the network went away. */
  static boolean isResumable(DualstreamException error) {
    return error.code() == Status.Code.UNAVAILABLE;
  }

  private void startAttempt() {
    if (everLive || failedAttempts > 0) {
      beforeReconnect.run();
    }
    Attempt attempt = new Attempt();
    current = attempt;
    SubscribeRequest wire = Convert.subscribeRequest(request, cursor);
    caller.serverStreaming(EventServiceMethods.SUBSCRIBE, wire, attempt);
    attempt.started();
    if (closed) {
      // close() ran before `current` was this attempt, or before its call was started: close()
      // writes `closed` and then reads `started`, this thread the other way round, so (both
      // volatile) at least one of the two cancels the call.
      attempt.cancel();
    }
  }

  /** One Subscribe call, observed on gRPC's threads. */
  private final class Attempt
      implements ClientResponseObserver<SubscribeRequest, SubscribeResponse> {
    private volatile ClientCallStreamObserver<SubscribeRequest> call;
    // The call exists from beforeStart on, but gRPC sends the request only after that: a call
    // cancelled in between fails the send with IllegalStateException on the thread starting it.
    private volatile boolean started;

    @Override
    public void beforeStart(ClientCallStreamObserver<SubscribeRequest> requestStream) {
      call = requestStream;
      requestStream.disableAutoRequestWithInitial(bufferMessages);
    }

    @Override
    public void onNext(SubscribeResponse response) {
      deliver(new Received(this, response));
    }

    @Override
    public void onError(Throwable failure) {
      deliver(new Ended(this, failure));
    }

    @Override
    public void onCompleted() {
      deliver(new Ended(this, null));
    }

    void request(int count) {
      call.request(count);
    }

    void started() {
      started = true;
    }

    /** Cancels the call once it is started; before that, {@code startAttempt} cancels it. */
    void cancel() {
      ClientCallStreamObserver<SubscribeRequest> startedCall = call;
      if (started && startedCall != null) {
        startedCall.cancel("the subscription was closed", null);
      }
    }

    private void deliver(Signal signal) {
      if (!signals.offer(signal) && !closed) {
        // Flow control makes this impossible; failing loudly beats blocking gRPC's thread.
        throw new IllegalStateException("subscription buffer overflow: flow control broken");
      }
    }
  }
}
