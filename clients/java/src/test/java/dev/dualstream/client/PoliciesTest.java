package dev.dualstream.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.HashSet;
import java.util.Set;
import java.util.UUID;
import org.junit.jupiter.api.Test;

/** Backoff arithmetic and the UUIDv7 ids, as pure logic. */
class PoliciesTest {
  private static final Backoff BACKOFF = new Backoff(Duration.ofMillis(100), Duration.ofSeconds(2));

  @Test
  void theDelayDoublesUpToTheCapWithJitterInItsUpperHalf() {
    long[] nominalMillis = {100, 200, 400, 800, 1600, 2000, 2000};
    for (int retry = 1; retry <= nominalMillis.length; retry++) {
      long nominal = nominalMillis[retry - 1];
      assertEquals(Duration.ofMillis(nominal / 2), BACKOFF.delayBefore(retry, () -> 0.0));
      Duration high = BACKOFF.delayBefore(retry, () -> 0.999_999);
      assertTrue(high.compareTo(Duration.ofMillis(nominal)) <= 0);
      assertTrue(high.compareTo(Duration.ofMillis(nominal - 1)) >= 0);
    }
  }

  @Test
  void aHugeRetryNumberStaysAtTheCap() {
    assertEquals(Duration.ofSeconds(1), BACKOFF.delayBefore(Integer.MAX_VALUE, () -> 0.0));
    Backoff wide = new Backoff(Duration.ofNanos(1), Duration.ofDays(365));
    assertEquals(Duration.ofDays(365).dividedBy(2), wide.delayBefore(500, () -> 0.0));
  }

  @Test
  void policiesRejectNonsense() {
    assertThrows(IllegalArgumentException.class, () -> new Backoff(Duration.ZERO, Duration.ZERO));
    assertThrows(
        IllegalArgumentException.class,
        () -> new Backoff(Duration.ofSeconds(2), Duration.ofSeconds(1)));
    assertThrows(IllegalArgumentException.class, () -> new RetryPolicy(0, BACKOFF));
    assertThrows(IllegalArgumentException.class, () -> BACKOFF.delayBefore(0));
  }

  @Test
  void uuidV7CarriesItsTimeVersionAndVariant() {
    long millis = 1_732_000_000_123L;
    UUID id = UuidV7.at(millis);
    assertEquals(7, id.version());
    assertEquals(2, id.variant());
    assertEquals(millis, id.getMostSignificantBits() >>> 16);
  }

  @Test
  void uuidV7SortsByTimeAndDoesNotRepeat() {
    assertTrue(UuidV7.at(1000).toString().compareTo(UuidV7.at(1001).toString()) < 0);
    Set<UUID> seen = new HashSet<>();
    for (int i = 0; i < 10_000; i++) {
      assertTrue(seen.add(UuidV7.next()));
    }
  }

  @Test
  void aSubscriptionRequestNeedsASourceAndOnePosition() {
    assertThrows(IllegalArgumentException.class, () -> SubscriptionRequest.builder().build());
    assertThrows(
        IllegalArgumentException.class,
        () ->
            SubscriptionRequest.builder().allOf("user").resumeFrom("v1.x").startEarliest().build());
  }
}
