package dev.dualstream.client;

import io.grpc.Status;
import java.time.Duration;
import java.util.Iterator;
import java.util.List;
import java.util.NoSuchElementException;
import java.util.Optional;
import java.util.Spliterator;
import java.util.Spliterators;
import java.util.stream.Stream;
import java.util.stream.StreamSupport;

/**
 * A live subscription, read as a blocking iterator: {@link #next()} waits for the next {@link
 * Notification}, {@link Gap} or {@link CaughtUp}. It is live when {@code subscribe} returns, so
 * every matching event published after that is delivered. When the stream breaks, it resumes from
 * its last cursor by itself: the iteration goes on with every event once, in per-source order
 * ({@link #reconnects()} counts the breaks).
 *
 * <pre>{@code
 * try (Subscription subscription = client.subscribe(request)) {
 *   for (StreamMessage message : (Iterable<StreamMessage>) () -> subscription) { ... }
 * }
 * }</pre>
 *
 * <p>Read it from one thread; {@link #close()} may be called from any. After a close, {@link
 * #hasNext()} is false.
 */
public final class Subscription implements Iterator<StreamMessage>, AutoCloseable {
  private final ResumingStream stream;
  private StreamMessage next;

  Subscription(ResumingStream stream) {
    this.stream = stream;
  }

  /**
   * Waits for the next message; false once the subscription is closed.
   *
   * @throws DualstreamException the subscription failed for good (see {@link ReconnectPolicy})
   */
  @Override
  public boolean hasNext() {
    if (next == null) {
      next = await(Long.MAX_VALUE);
    }
    return next != null;
  }

  /**
   * The next message, waiting for it.
   *
   * @throws NoSuchElementException the subscription is closed
   * @throws DualstreamException the subscription failed for good
   */
  @Override
  public StreamMessage next() {
    if (!hasNext()) {
      throw new NoSuchElementException("the subscription is closed");
    }
    StreamMessage message = next;
    next = null;
    return message;
  }

  /** The next message if one arrives within {@code timeout}; empty otherwise or once closed. */
  public Optional<StreamMessage> poll(Duration timeout) {
    if (next == null) {
      next = await(System.nanoTime() + timeout.toNanos());
    }
    StreamMessage message = next;
    next = null;
    return Optional.ofNullable(message);
  }

  /** The messages as a sequential stream; closing the stream closes the subscription. */
  public Stream<StreamMessage> stream() {
    Spliterator<StreamMessage> spliterator =
        Spliterators.spliteratorUnknownSize(this, Spliterator.ORDERED | Spliterator.NONNULL);
    return StreamSupport.stream(spliterator, false).onClose(this::close);
  }

  /**
   * The cursor of the last message returned (before any, of the stream's start). Store it to
   * subscribe again later from exactly here ({@link SubscriptionRequest.Builder#resumeFrom}).
   */
  public String cursor() {
    return stream.cursor();
  }

  /** The Redis channels and patterns the stream listens on. */
  public List<String> channels() {
    return stream.channels();
  }

  /** How many times the stream broke and was resumed. */
  public int reconnects() {
    return stream.reconnects();
  }

  /** Ends the subscription and cancels its call; idempotent. */
  @Override
  public void close() {
    stream.close();
  }

  private StreamMessage await(long deadlineNanos) {
    try {
      return stream.poll(deadlineNanos);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      close();
      throw Errors.forCode(Status.Code.CANCELLED, "interrupted while waiting for a message", e);
    }
  }
}
