package dev.dualstream.client;

/**
 * Where Kafka stored a published event.
 *
 * @param id the event's id, as sent or as assigned
 * @param topic the Kafka topic
 * @param partition the Kafka partition
 * @param offset the Kafka offset within the partition
 * @param notified whether the Redis notification went out; false means Redis was unreachable or
 *     slow (the event is durable all the same, and seen by a subscription that resumes over it)
 */
public record PublishResult(
    String id, String topic, int partition, long offset, boolean notified) {}
