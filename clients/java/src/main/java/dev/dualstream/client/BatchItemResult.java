package dev.dualstream.client;

import java.util.Optional;

/**
 * The outcome of one event of a batch: {@link #published()} when Kafka acknowledged it, else {@link
 * #error()}. An event Kafka did not acknowledge was not notified either.
 *
 * @param id the event's id
 * @param published where Kafka stored the event, when it did
 * @param error why the event was not published, when it was not
 */
public record BatchItemResult(
    String id, Optional<PublishResult> published, Optional<DualstreamException> error) {
  static BatchItemResult success(PublishResult result) {
    return new BatchItemResult(result.id(), Optional.of(result), Optional.empty());
  }

  static BatchItemResult failure(String id, DualstreamException error) {
    return new BatchItemResult(id, Optional.empty(), Optional.of(error));
  }

  /** Whether Kafka acknowledged the event. */
  public boolean isPublished() {
    return published.isPresent();
  }
}
