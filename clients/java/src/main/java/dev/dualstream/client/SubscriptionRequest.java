package dev.dualstream.client;

import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.Optional;

/**
 * What to subscribe to, and from when. Immutable; build it with {@link #builder()}.
 *
 * <pre>{@code
 * SubscriptionRequest request = SubscriptionRequest.builder()
 *     .source("user", "octocat")
 *     .allOf("repo")                 // every source of type repo
 *     .policy(SlowConsumerPolicy.REPLAY)
 *     .build();
 * }</pre>
 */
public final class SubscriptionRequest {
  /**
   * How many notifications the sidecar may pack in one stream message unless the builder says
   * otherwise. A stream with a backlog then costs the sidecar a fraction per notification, so it
   * catches up instead of being held back into gaps.
   */
  public static final int DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE = 64;

  /** A followed source: an exact entity, or every entity of a type when the id is {@code *}. */
  public record Source(String sourceType, String sourceId) {
    public Source {
      Objects.requireNonNull(sourceType, "sourceType");
      Objects.requireNonNull(sourceId, "sourceId");
    }
  }

  private final List<Source> sources;
  private final List<String> types;
  private final String resumeCursor;
  private final boolean startEarliest;
  private final Instant startTime;
  private final SlowConsumerPolicy policy;
  private final boolean includeData;
  private final int maxNotificationsPerMessage;
  private final boolean autoResume;

  private SubscriptionRequest(Builder builder) {
    this.sources = List.copyOf(builder.sources);
    this.types = List.copyOf(builder.types);
    this.resumeCursor = builder.resumeCursor;
    this.startEarliest = builder.startEarliest;
    this.startTime = builder.startTime;
    this.policy = builder.policy;
    this.includeData = builder.includeData;
    this.maxNotificationsPerMessage = builder.maxNotificationsPerMessage;
    this.autoResume =
        builder.autoResume != null ? builder.autoResume : policy != SlowConsumerPolicy.CLOSE;
  }

  public static Builder builder() {
    return new Builder();
  }

  public List<Source> sources() {
    return sources;
  }

  /** Only events of these types; empty for every type. */
  public List<String> types() {
    return types;
  }

  /** The cursor to resume after; empty when not resuming. */
  public String resumeCursor() {
    return resumeCursor;
  }

  public boolean startEarliest() {
    return startEarliest;
  }

  public Optional<Instant> startTime() {
    return Optional.ofNullable(startTime);
  }

  public SlowConsumerPolicy policy() {
    return policy;
  }

  public boolean includeData() {
    return includeData;
  }

  /** The most notifications per stream message; 1 keeps one per message. */
  public int maxNotificationsPerMessage() {
    return maxNotificationsPerMessage;
  }

  /** Whether a broken stream is resumed by the client (see {@link ReconnectPolicy}). */
  public boolean autoResume() {
    return autoResume;
  }

  /** Builds a {@link SubscriptionRequest}. */
  public static final class Builder {
    private final List<Source> sources = new ArrayList<>();
    private final List<String> types = new ArrayList<>();
    private String resumeCursor = "";
    private boolean startEarliest;
    private Instant startTime;
    private SlowConsumerPolicy policy = SlowConsumerPolicy.GAP;
    private boolean includeData;
    private int maxNotificationsPerMessage = DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE;
    private Boolean autoResume;

    private Builder() {}

    /** Follow one entity. */
    public Builder source(String sourceType, String sourceId) {
      sources.add(new Source(sourceType, sourceId));
      return this;
    }

    /** Follow every entity of {@code sourceType} (source id {@code *}). */
    public Builder allOf(String sourceType) {
      return source(sourceType, "*");
    }

    /** Only events of these types (call again to add more). */
    public Builder types(String... eventTypes) {
      for (String type : eventTypes) {
        types.add(Objects.requireNonNull(type, "type"));
      }
      return this;
    }

    /**
     * Resume after the message that carried {@code cursor}: the sidecar replays what was missed
     * from Kafka, then goes on live, with no gap and no duplicate.
     */
    public Builder resumeFrom(String cursor) {
      this.resumeCursor = Objects.requireNonNull(cursor, "cursor");
      return this;
    }

    /** Replay from the oldest event Kafka still holds before going live. */
    public Builder startEarliest() {
      this.startEarliest = true;
      this.startTime = null;
      return this;
    }

    /** Replay events Kafka stored at or after {@code time} before going live. */
    public Builder startAt(Instant time) {
      this.startTime = Objects.requireNonNull(time, "time");
      this.startEarliest = false;
      return this;
    }

    /** What the sidecar does when the stream cannot deliver everything live ({@code GAP}). */
    public Builder policy(SlowConsumerPolicy value) {
      this.policy = Objects.requireNonNull(value, "policy");
      return this;
    }

    /**
     * Carry each event's payload and attributes in its notification ({@link Notification#event()}).
     */
    public Builder includeData(boolean value) {
      this.includeData = value;
      return this;
    }

    /**
     * Let the sidecar pack up to {@code count} notifications in one stream message when the stream
     * has a backlog (a replay, a burst). The client unpacks them: the application still sees one
     * {@link Notification} at a time. The default is {@link
     * #DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE}; 1 keeps one per message.
     */
    public Builder maxNotificationsPerMessage(int count) {
      if (count < 1) {
        throw new IllegalArgumentException("maxNotificationsPerMessage must be at least 1");
      }
      this.maxNotificationsPerMessage = count;
      return this;
    }

    /**
     * Whether the client resumes the stream when it breaks. On by default, except with {@link
     * SlowConsumerPolicy#CLOSE}: that policy asks to be told when the stream cannot keep up, so a
     * stream that ends is reported ({@code UNAVAILABLE} for a Redis outage) unless resuming is
     * asked for here.
     */
    public Builder autoResume(boolean value) {
      this.autoResume = value;
      return this;
    }

    /**
     * @throws IllegalArgumentException without a source, or with both a resume cursor and a start
     *     position
     */
    public SubscriptionRequest build() {
      if (sources.isEmpty()) {
        throw new IllegalArgumentException("name at least one source to subscribe to");
      }
      if (!resumeCursor.isEmpty() && (startEarliest || startTime != null)) {
        throw new IllegalArgumentException(
            "a resume cursor and a start position exclude each other");
      }
      return new SubscriptionRequest(this);
    }
  }
}
