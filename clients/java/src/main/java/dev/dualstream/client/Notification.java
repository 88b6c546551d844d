package dev.dualstream.client;

import java.util.Optional;

/**
 * An event was published to a followed source. It names the event and where Kafka holds it; the
 * payload comes along only when the subscription asked for {@code includeData}.
 *
 * @param id the event's id
 * @param type the event's type
 * @param sourceType the event's source type
 * @param sourceId the event's source id
 * @param topic the Kafka topic holding the event
 * @param partition the Kafka partition holding the event
 * @param offset the Kafka offset of the event within its partition
 * @param cursor resume after this notification with this cursor
 * @param replayed whether it was replayed from Kafka rather than received live
 * @param traceparent the W3C {@code traceparent} to continue the event's trace from; empty when the
 *     event was published without a trace. Hand it, with {@code tracestate}, to an OpenTelemetry
 *     propagator to make your own work on the event part of its trace
 * @param tracestate the W3C {@code tracestate} that goes with {@code traceparent}, often empty
 * @param event the whole event, read from Kafka, when the subscription asked for {@code
 *     includeData}
 */
public record Notification(
    String id,
    String type,
    String sourceType,
    String sourceId,
    String topic,
    int partition,
    long offset,
    String cursor,
    boolean replayed,
    String traceparent,
    String tracestate,
    Optional<EventInput> event)
    implements StreamMessage {}
