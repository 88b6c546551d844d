package dev.dualstream.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.dualstream.v1.SubscribeResponse;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ForwardingClientCall;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.stub.ServerCallStreamObserver;
import java.time.Duration;
import java.util.Optional;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Flow;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** The {@link Flow.Publisher} form: demand, cancellation, errors. */
class PublisherTest {
  private static final SubscriptionRequest USERS =
      SubscriptionRequest.builder().allOf("user").build();

  private FakeSidecar sidecar;
  private DualstreamClient client;

  @BeforeEach
  void start() throws Exception {
    sidecar = new FakeSidecar();
    client =
        DualstreamClient.builder(sidecar.target())
            .reconnectPolicy(
                new ReconnectPolicy(
                    new Backoff(Duration.ofMillis(5), Duration.ofMillis(20)), Optional.empty()))
            .build();
  }

  @AfterEach
  void stop() throws Exception {
    client.close();
    sidecar.close();
  }

  /** Records every signal; requests nothing by itself. */
  static final class Recorder implements Flow.Subscriber<StreamMessage> {
    final BlockingQueue<Object> signals = new LinkedBlockingQueue<>();
    volatile Flow.Subscription subscription;
    final CountDownLatch subscribed = new CountDownLatch(1);

    @Override
    public void onSubscribe(Flow.Subscription value) {
      subscription = value;
      subscribed.countDown();
    }

    @Override
    public void onNext(StreamMessage item) {
      signals.add(item);
    }

    @Override
    public void onError(Throwable throwable) {
      signals.add(throwable);
    }

    @Override
    public void onComplete() {
      signals.add("complete");
    }

    Object nextSignal() throws InterruptedException {
      Object signal = signals.poll(30, TimeUnit.SECONDS);
      if (signal == null) {
        throw new AssertionError("no signal within 30 s");
      }
      return signal;
    }
  }

  private void streamForever() {
    sidecar.subscribe =
        (request, response) -> {
          response.onNext(ResumeTest.subscribed("c0"));
          for (int i = 1; i <= 50; i++) {
            response.onNext(ResumeTest.notification("e" + i, i, "c" + i));
          }
        };
  }

  @Test
  void deliversOnlyWhatWasRequested() throws Exception {
    streamForever();
    Recorder recorder = new Recorder();
    client.publisher(USERS).subscribe(recorder);
    assertTrue(recorder.subscribed.await(30, TimeUnit.SECONDS));
    recorder.subscription.request(3);
    for (int i = 1; i <= 3; i++) {
      assertEquals("e" + i, ((Notification) recorder.nextSignal()).id());
    }
    assertEquals(null, recorder.signals.poll(300, TimeUnit.MILLISECONDS), "more than requested");
    recorder.subscription.request(2);
    assertEquals("e4", ((Notification) recorder.nextSignal()).id());
    assertEquals("e5", ((Notification) recorder.nextSignal()).id());
    recorder.subscription.cancel();
  }

  @Test
  void cancelEndsTheCallAndTheSignals() throws Exception {
    CountDownLatch called = new CountDownLatch(1);
    CountDownLatch cancelled = new CountDownLatch(1);
    sidecar.subscribe =
        (request, response) -> {
          ((ServerCallStreamObserver<SubscribeResponse>) response)
              .setOnCancelHandler(cancelled::countDown);
          response.onNext(ResumeTest.subscribed("c0"));
          called.countDown();
        };
    Recorder recorder = new Recorder();
    client.publisher(USERS).subscribe(recorder);
    assertTrue(recorder.subscribed.await(30, TimeUnit.SECONDS));
    recorder.subscription.request(Long.MAX_VALUE);
    assertTrue(called.await(30, TimeUnit.SECONDS));
    recorder.subscription.cancel();
    assertTrue(cancelled.await(30, TimeUnit.SECONDS));
    assertEquals(null, recorder.signals.poll(300, TimeUnit.MILLISECONDS));
  }

  @Test
  void aRefusalArrivesAsOnError() throws Exception {
    sidecar.subscribe =
        (request, response) -> response.onError(Status.UNAUTHENTICATED.asRuntimeException());
    Recorder recorder = new Recorder();
    client.publisher(USERS).subscribe(recorder);
    assertInstanceOf(UnauthenticatedException.class, recorder.nextSignal());
  }

  @Test
  void aNonPositiveRequestIsAnError() throws Exception {
    streamForever();
    Recorder recorder = new Recorder();
    client.publisher(USERS).subscribe(recorder);
    assertTrue(recorder.subscribed.await(30, TimeUnit.SECONDS));
    recorder.subscription.request(0);
    assertInstanceOf(IllegalArgumentException.class, recorder.nextSignal());
  }

  /** An interceptor that runs {@code hook} on the calling thread before each request is sent. */
  private static ClientInterceptor beforeSending(Runnable hook) {
    return new ClientInterceptor() {
      @Override
      public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
          MethodDescriptor<ReqT, RespT> method, CallOptions options, Channel next) {
        return new ForwardingClientCall.SimpleForwardingClientCall<>(
            next.newCall(method, options)) {
          @Override
          public void sendMessage(ReqT message) {
            hook.run();
            super.sendMessage(message);
          }
        };
      }
    };
  }

  @Test
  void anInvalidRequestWhileTheCallStartsIsStillAnError() throws Exception {
    // The request(0), which closes the stream, lands after gRPC made the call but before it sent
    // the request: cancelling the call then made the starting thread's send throw, and the
    // subscriber never heard anything (seen once in CI).
    CountDownLatch sending = new CountDownLatch(1);
    CountDownLatch requested = new CountDownLatch(1);
    AtomicBoolean armed = new AtomicBoolean();
    ClientInterceptor pauseBeforeSending =
        beforeSending(
            () -> {
              if (armed.get()) {
                sending.countDown();
                try {
                  assertTrue(requested.await(30, TimeUnit.SECONDS));
                } catch (InterruptedException e) {
                  Thread.currentThread().interrupt();
                }
              }
            });
    streamForever();
    try (DualstreamClient pausing =
        DualstreamClient.builder(sidecar.target()).intercept(pauseBeforeSending).build()) {
      // A first stream, so the channel is connected and the next call is gRPC's real call, not
      // one that waits for the connection (that one ignores a send after its cancellation).
      Recorder first = new Recorder();
      pausing.publisher(USERS).subscribe(first);
      assertTrue(first.subscribed.await(30, TimeUnit.SECONDS));
      first.subscription.request(1);
      assertEquals("e1", ((Notification) first.nextSignal()).id());
      first.subscription.cancel();
      armed.set(true);
      Recorder recorder = new Recorder();
      pausing.publisher(USERS).subscribe(recorder);
      assertTrue(recorder.subscribed.await(30, TimeUnit.SECONDS));
      assertTrue(sending.await(30, TimeUnit.SECONDS));
      recorder.subscription.request(0);
      requested.countDown();
      assertInstanceOf(IllegalArgumentException.class, recorder.nextSignal());
    }
  }

  @Test
  void aStreamThatFailsUnexpectedlyIsAnError() throws Exception {
    ClientInterceptor refuseToSend =
        beforeSending(
            () -> {
              throw new IllegalStateException("this interceptor refuses every call");
            });
    streamForever();
    try (DualstreamClient refusing =
        DualstreamClient.builder(sidecar.target()).intercept(refuseToSend).build()) {
      Recorder recorder = new Recorder();
      refusing.publisher(USERS).subscribe(recorder);
      assertTrue(recorder.subscribed.await(30, TimeUnit.SECONDS));
      recorder.subscription.request(1);
      Object signal = recorder.nextSignal();
      assertInstanceOf(IllegalStateException.class, signal);
      assertEquals("this interceptor refuses every call", ((Throwable) signal).getMessage());
    }
  }

  @Test
  void eachSubscriberGetsItsOwnStream() throws Exception {
    AtomicInteger calls = new AtomicInteger();
    sidecar.subscribe =
        (request, response) -> {
          calls.incrementAndGet();
          response.onNext(ResumeTest.subscribed("c0"));
          response.onNext(ResumeTest.notification("e1", 1, "c1"));
        };
    Flow.Publisher<StreamMessage> publisher = client.publisher(USERS);
    Recorder first = new Recorder();
    Recorder second = new Recorder();
    publisher.subscribe(first);
    publisher.subscribe(second);
    for (Recorder recorder : new Recorder[] {first, second}) {
      assertTrue(recorder.subscribed.await(30, TimeUnit.SECONDS));
      recorder.subscription.request(1);
      assertEquals("e1", ((Notification) recorder.nextSignal()).id());
      recorder.subscription.cancel();
    }
    assertEquals(2, calls.get());
    assertFalse(first.signals.contains("complete"));
  }
}
