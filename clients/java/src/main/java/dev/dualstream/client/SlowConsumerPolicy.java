package dev.dualstream.client;

/**
 * What the sidecar does when a stream cannot deliver everything live: its client reads too slowly,
 * or the sidecar lost Redis for a while.
 */
public enum SlowConsumerPolicy {
  /** Drop what cannot be delivered and send a {@link Gap} with the cursor to get it back. */
  GAP,
  /** Fill the hole from Kafka, then go on live: nothing is missed. */
  REPLAY,
  /**
   * End the stream: a slow reader's subscription fails with {@link ResourceExhaustedException}; a
   * Redis outage ends the stream with {@code UNAVAILABLE}, which the client resumes from.
   */
  CLOSE
}
