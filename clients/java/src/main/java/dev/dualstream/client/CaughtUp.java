package dev.dualstream.client;

/**
 * A replay from Kafka (a resume, a start position, or a {@link SlowConsumerPolicy#REPLAY} of a
 * hole) has reached the live stream: what follows is live.
 *
 * @param replayed how many events the replay delivered
 * @param cursor the stream's position at the seam
 */
public record CaughtUp(long replayed, String cursor) implements StreamMessage {}
