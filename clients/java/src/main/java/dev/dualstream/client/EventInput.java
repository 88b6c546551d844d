package dev.dualstream.client;

import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;

/**
 * An event to publish, or the whole event a notification carries when the subscription asked for
 * {@code includeData}. Immutable. Leave the id empty to have the client assign a UUIDv7.
 *
 * <pre>{@code
 * EventInput event = EventInput.builder("user.starred", "user", "octocat")
 *     .json("{\"repo\":\"hello\"}")
 *     .attribute("tenant", "acme")
 *     .build();
 * }</pre>
 */
public final class EventInput {
  private final String id;
  private final String type;
  private final String sourceType;
  private final String sourceId;
  private final byte[] data;
  private final String contentType;
  private final Instant time;
  private final Map<String, String> attributes;

  private EventInput(Builder builder) {
    this.id = builder.id;
    this.type = builder.type;
    this.sourceType = builder.sourceType;
    this.sourceId = builder.sourceId;
    this.data = builder.data.clone();
    this.contentType = builder.contentType;
    this.time = builder.time;
    this.attributes = Map.copyOf(builder.attributes);
  }

  /** A builder for an event of {@code type} about the entity {@code sourceType:sourceId}. */
  public static Builder builder(String type, String sourceType, String sourceId) {
    return new Builder(type, sourceType, sourceId);
  }

  /** An event with a payload and nothing else set. */
  public static EventInput of(String type, String sourceType, String sourceId, byte[] data) {
    return builder(type, sourceType, sourceId).data(data).build();
  }

  /** The event's id; empty until the client or the sidecar assigns one. */
  public String id() {
    return id;
  }

  /** The kind of event, for example {@code order.created}. */
  public String type() {
    return type;
  }

  /** The kind of entity the event is about, for example {@code user}. */
  public String sourceType() {
    return sourceType;
  }

  /** The entity the event is about, for example {@code octocat}; the Kafka key. */
  public String sourceId() {
    return sourceId;
  }

  /** A copy of the payload. */
  public byte[] data() {
    return data.clone();
  }

  /** The media type of the payload; empty when not given. */
  public String contentType() {
    return contentType;
  }

  /** When the event happened; empty to let the sidecar use the time it received it. */
  public Optional<Instant> time() {
    return Optional.ofNullable(time);
  }

  /** Extension attributes, written as {@code ce_<name>} Kafka headers. */
  public Map<String, String> attributes() {
    return attributes;
  }

  /** This event with another id. */
  public EventInput withId(String newId) {
    return toBuilder().id(newId).build();
  }

  /** A builder starting from this event. */
  public Builder toBuilder() {
    Builder builder =
        new Builder(type, sourceType, sourceId).id(id).data(data).contentType(contentType);
    builder.time = time;
    builder.attributes.putAll(attributes);
    return builder;
  }

  @Override
  public boolean equals(Object other) {
    return other instanceof EventInput that
        && id.equals(that.id)
        && type.equals(that.type)
        && sourceType.equals(that.sourceType)
        && sourceId.equals(that.sourceId)
        && Arrays.equals(data, that.data)
        && contentType.equals(that.contentType)
        && Objects.equals(time, that.time)
        && attributes.equals(that.attributes);
  }

  @Override
  public int hashCode() {
    return Objects.hash(id, type, sourceType, sourceId, Arrays.hashCode(data), contentType, time);
  }

  @Override
  public String toString() {
    return "EventInput{id="
        + id
        + ", type="
        + type
        + ", source="
        + sourceType
        + ":"
        + sourceId
        + ", "
        + data.length
        + " bytes"
        + (contentType.isEmpty() ? "" : " of " + contentType)
        + "}";
  }

  /** Builds an {@link EventInput}. */
  public static final class Builder {
    private String id = "";
    private final String type;
    private final String sourceType;
    private final String sourceId;
    private byte[] data = new byte[0];
    private String contentType = "";
    private Instant time;
    private final Map<String, String> attributes = new LinkedHashMap<>();

    private Builder(String type, String sourceType, String sourceId) {
      this.type = Objects.requireNonNull(type, "type");
      this.sourceType = Objects.requireNonNull(sourceType, "sourceType");
      this.sourceId = Objects.requireNonNull(sourceId, "sourceId");
    }

    /** The event's id; retries and consumers deduplicate on it. */
    public Builder id(String value) {
      this.id = Objects.requireNonNull(value, "id");
      return this;
    }

    /** The payload, written to Kafka unchanged and never sent to Redis. */
    public Builder data(byte[] value) {
      this.data = Objects.requireNonNull(value, "data").clone();
      return this;
    }

    /** A JSON payload, encoded as UTF-8, with content type {@code application/json}. */
    public Builder json(String value) {
      return data(value.getBytes(StandardCharsets.UTF_8)).contentType("application/json");
    }

    /** The media type of the payload. */
    public Builder contentType(String value) {
      this.contentType = Objects.requireNonNull(value, "contentType");
      return this;
    }

    /** When the event happened. */
    public Builder time(Instant value) {
      this.time = Objects.requireNonNull(value, "time");
      return this;
    }

    /** One extension attribute: 1 to 20 lower-case letters or digits, not a CloudEvents name. */
    public Builder attribute(String name, String value) {
      attributes.put(Objects.requireNonNull(name, "name"), Objects.requireNonNull(value, "value"));
      return this;
    }

    /** Several extension attributes. */
    public Builder attributes(Map<String, String> values) {
      values.forEach(this::attribute);
      return this;
    }

    public EventInput build() {
      return new EventInput(this);
    }
  }
}
