package dev.dualstream.client;

import java.security.SecureRandom;
import java.util.UUID;

/**
 * Time-ordered UUIDs (RFC 9562 version 7): 48 bits of Unix milliseconds, then 74 random bits. The
 * client gives one to an event without an id before its first attempt, so retries of the event
 * carry the same id, as the sidecar would have assigned.
 */
final class UuidV7 {
  private static final SecureRandom RANDOM = new SecureRandom();

  private UuidV7() {}

  static UUID next() {
    return at(System.currentTimeMillis());
  }

  static UUID at(long unixMillis) {
    long random = RANDOM.nextLong();
    int randomHigh = RANDOM.nextInt();
    long mostSignificant = (unixMillis << 16) | 0x7000L | (randomHigh & 0x0FFFL);
    long leastSignificant = (random & 0x3FFF_FFFF_FFFF_FFFFL) | 0x8000_0000_0000_0000L;
    return new UUID(mostSignificant, leastSignificant);
  }
}
