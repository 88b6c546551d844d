package dev.dualstream.client;

/**
 * One message a subscription delivers: a {@link Notification}, a {@link Gap} or a {@link CaughtUp}.
 * Each carries the cursor to resume from after it.
 */
public sealed interface StreamMessage permits Notification, Gap, CaughtUp {
  /**
   * Resume after this message with this cursor ({@link SubscriptionRequest.Builder#resumeFrom}).
   */
  String cursor();
}
