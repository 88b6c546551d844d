package dev.dualstream.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.dualstream.v1.SubscribeResponse;
import io.grpc.Status;
import io.grpc.stub.ServerCallStreamObserver;
import java.time.Duration;
import java.util.Optional;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Flow;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
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
