package dev.dualstream.client;

import java.time.Duration;
import java.util.Objects;
import java.util.concurrent.Executor;
import java.util.concurrent.Flow;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;
import java.util.function.Supplier;

/**
 * A subscription as a {@link Flow.Publisher}: each {@code subscribe} opens its own resuming stream,
 * delivered on the client's executor (by default a thread of its own) as the subscriber requests
 * messages, so a subscriber's demand is gRPC's flow control. {@code onError} reports what {@link
 * Subscription#next()} would throw; {@code onComplete} is never signalled, since a subscription
 * goes on until cancelled.
 */
final class SubscriptionPublisher implements Flow.Publisher<StreamMessage> {
  private final Supplier<ResumingStream> streams;
  private final Duration liveTimeout;
  private final Executor executor;

  SubscriptionPublisher(Supplier<ResumingStream> streams, Duration liveTimeout, Executor executor) {
    this.streams = streams;
    this.liveTimeout = liveTimeout;
    this.executor = executor;
  }

  @Override
  public void subscribe(Flow.Subscriber<? super StreamMessage> subscriber) {
    Objects.requireNonNull(subscriber, "subscriber");
    Delivery delivery = new Delivery(subscriber, streams.get());
    subscriber.onSubscribe(delivery);
    executor.execute(delivery);
  }

  /** One subscriber's stream, drained on one thread as demand allows. */
  private final class Delivery implements Flow.Subscription, Runnable {
    private final Flow.Subscriber<? super StreamMessage> subscriber;
    private final ResumingStream stream;
    private final ReentrantLock lock = new ReentrantLock();
    private final Condition demandChanged = lock.newCondition();
    private long demand;
    private boolean cancelled;
    private boolean invalidRequest;
    private long invalidCount;

    Delivery(Flow.Subscriber<? super StreamMessage> subscriber, ResumingStream stream) {
      this.subscriber = subscriber;
      this.stream = stream;
    }

    @Override
    public void request(long count) {
      lock.lock();
      try {
        if (cancelled) {
          return;
        }
        if (count <= 0) {
          // Reactive Streams §3.9: signalled as onError by the draining thread.
          invalidRequest = true;
          invalidCount = count;
        } else {
          demand = demand + count < 0 ? Long.MAX_VALUE : demand + count;
        }
        demandChanged.signalAll();
      } finally {
        lock.unlock();
      }
      if (count <= 0) {
        stream.close();
      }
    }

    @Override
    public void cancel() {
      lock.lock();
      try {
        cancelled = true;
        demandChanged.signalAll();
      } finally {
        lock.unlock();
      }
      stream.close();
    }

    @Override
    public void run() {
      boolean inSubscriber = false;
      try {
        stream.awaitLive(liveTimeout);
        while (awaitDemand()) {
          StreamMessage message = stream.poll(Long.MAX_VALUE);
          if (message == null) {
            break; // Closed: by cancel() or by an invalid request.
          }
          inSubscriber = true;
          subscriber.onNext(message);
          inSubscriber = false;
        }
        signalInvalidRequest();
      } catch (DualstreamException e) {
        if (!signalInvalidRequest() && !isCancelled()) {
          subscriber.onError(e);
        }
      } catch (InterruptedException e) {
        stream.close();
        Thread.currentThread().interrupt();
      } catch (RuntimeException | Error e) {
        stream.close();
        if (inSubscriber || e instanceof Error) {
          // A subscriber that throws breaks §2.13; the stream is no use to it any more.
          throw e;
        }
        // The stream failed in a way it does not translate (an interceptor that throws, say):
        // the subscriber hears of it, as Subscription.next() would throw it, rather than wait.
        if (!signalInvalidRequest() && !isCancelled()) {
          subscriber.onError(e);
        }
      }
    }

    /** Waits for demand; false once cancelled or after an invalid request. */
    private boolean awaitDemand() throws InterruptedException {
      lock.lock();
      try {
        while (demand == 0 && !cancelled && !invalidRequest) {
          demandChanged.await();
        }
        if (cancelled || invalidRequest) {
          return false;
        }
        if (demand != Long.MAX_VALUE) {
          demand--;
        }
        return true;
      } finally {
        lock.unlock();
      }
    }

    private boolean isCancelled() {
      lock.lock();
      try {
        return cancelled;
      } finally {
        lock.unlock();
      }
    }

    /** Signals the pending invalid request, if there is one; true if it did. */
    private boolean signalInvalidRequest() {
      long count;
      lock.lock();
      try {
        if (cancelled || !invalidRequest) {
          return false;
        }
        count = invalidCount;
        cancelled = true;
      } finally {
        lock.unlock();
      }
      subscriber.onError(
          new IllegalArgumentException("request(n) needs n > 0, got " + count + " (§3.9)"));
      return true;
    }
  }
}
