package dev.dualstream.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import java.time.Duration;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Test;

/** The adaptive throttle as pure logic, on a given clock and random draw. */
class ThrottleTest {
  private static final DualstreamException SIDECAR_REFUSAL =
      new ResourceExhaustedException("past capacity", null, Duration.ofMillis(250), false);

  private final AtomicLong clock = new AtomicLong(1_000_000_000L);
  private double draw;

  private Throttle throttle() {
    return new Throttle(ThrottlePolicy.DEFAULT, clock::get, () -> draw);
  }

  @Test
  void underMinRequestsNothingIsRefused() {
    Throttle throttle = throttle();
    draw = 0; // Refuse whenever the probability is above 0.
    for (int i = 0; i < ThrottlePolicy.DEFAULT.minRequests(); i++) {
      assertNull(throttle.admit(), "attempt " + i);
      throttle.answered(SIDECAR_REFUSAL);
    }
    assertNotNull(throttle.admit(), "the 21st attempt, after 20 refusals");
  }

  @Test
  void aBurstNotYetAnsweredIsSentThenCallsStillWaitingCountAgainstTheSidecar() {
    Throttle throttle = throttle();
    draw = 0;
    for (int i = 0; i < 40; i++) {
      assertNull(throttle.admit(), "no answer yet: attempt " + i + " is sent");
    }
    for (int i = 0; i < ThrottlePolicy.DEFAULT.minRequests(); i++) {
      throttle.answered(null);
    }
    // 40 requests, 20 accepted: the 20 still waiting weigh against the sidecar.
    assertNotNull(throttle.admit());
  }

  @Test
  void aSidecarThatAcceptsEverythingIsNeverThrottled() {
    Throttle throttle = throttle();
    draw = 0;
    for (int i = 0; i < 1000; i++) {
      assertNull(throttle.admit(), "attempt " + i);
      throttle.answered(i % 2 == 0 ? null : Errors.forCode(Status.Code.UNAVAILABLE, "", null));
    }
  }

  @Test
  void aHundredRefusalsMakeTheProbabilityAbout99Percent() {
    Throttle throttle = throttle();
    send(throttle, 100, SIDECAR_REFUSAL);
    // p = (100 - 1.2 * 0) / 101 = 0.990...
    draw = 0.991;
    assertNull(throttle.admit());
    draw = 0.989;
    assertNotNull(throttle.admit());
  }

  @Test
  void deadlineExceededIsNotAnAccept() {
    Throttle throttle = throttle();
    send(throttle, 100, Errors.forCode(Status.Code.DEADLINE_EXCEEDED, "", null));
    draw = 0.98;
    assertNotNull(throttle.admit());
  }

  @Test
  void bucketsOlderThanTheWindowDropOut() {
    Throttle throttle = throttle();
    send(throttle, 100, SIDECAR_REFUSAL);
    draw = 0;
    // Most of a window later the refusals still count.
    clock.addAndGet(Duration.ofMillis(4400).toNanos());
    ResourceExhaustedException refusal = throttle.admit();
    assertNotNull(refusal);
    assertTrue(refusal.details().contains("refused 100 of this client's last 100 calls"));
    // A whole window after them they are gone: 1 attempt left in the window, under minRequests.
    clock.addAndGet(Duration.ofMillis(600).toNanos());
    assertNull(throttle.admit());
  }

  @Test
  void theRefusalSaysWhyAndCarriesTheLastHint() {
    Throttle throttle = throttle();
    send(throttle, 10, null);
    send(throttle, 20, SIDECAR_REFUSAL);
    draw = 0;
    ResourceExhaustedException refusal = throttle.admit();
    assertNotNull(refusal);
    assertEquals(Status.Code.RESOURCE_EXHAUSTED, refusal.code());
    assertTrue(refusal.throttled());
    assertEquals(Optional.of(Duration.ofMillis(250)), refusal.retryAfter());
    assertEquals(
        "not sent: the sidecar refused 20 of this client's last 30 calls as past capacity, so the"
            + " client holds calls back (client-side throttling); retry in 250 ms",
        refusal.details());
    // The local refusal counted as a request, not an accept.
    ResourceExhaustedException next = throttle.admit();
    assertTrue(next.details().contains("refused 20 of this client's last 31 calls"));
  }

  @Test
  void withoutAHintFromTheSidecarALocalRefusalSaysRetryIn100Ms() {
    Throttle throttle = throttle();
    send(throttle, 30, Errors.forCode(Status.Code.DEADLINE_EXCEEDED, "", null));
    draw = 0;
    assertEquals(Optional.of(Duration.ofMillis(100)), throttle.admit().retryAfter());
  }

  @Test
  void runSendsAdmittedAttemptsCountsTheirAnswersAndFailsRefusedOnesAtOnce() {
    Throttle throttle = throttle();
    AtomicInteger sent = new AtomicInteger();
    draw = 0;
    for (int i = 0; i < ThrottlePolicy.DEFAULT.minRequests(); i++) {
      throttle.run(
          () -> {
            sent.incrementAndGet();
            return CompletableFuture.failedFuture(SIDECAR_REFUSAL);
          });
    }
    CompletableFuture<Object> refused =
        throttle.run(
            () -> {
              sent.incrementAndGet();
              return new CompletableFuture<>();
            });
    assertEquals(ThrottlePolicy.DEFAULT.minRequests(), sent.get());
    assertTrue(refused.isCompletedExceptionally());
    assertTrue(Errors.translate(assertThrows(Exception.class, refused::join)).throttled());
  }

  @Test
  void noneSendsEverything() {
    Throttle throttle = new Throttle(ThrottlePolicy.NONE, clock::get, () -> 0.0);
    AtomicInteger sent = new AtomicInteger();
    for (int i = 0; i < 100; i++) {
      throttle.run(
          () -> {
            sent.incrementAndGet();
            return CompletableFuture.failedFuture(SIDECAR_REFUSAL);
          });
    }
    assertEquals(100, sent.get());
    assertFalse(ThrottlePolicy.NONE.enabled());
  }

  /** Sends {@code count} attempts, each answered with {@code answer} (null: a success). */
  private void send(Throttle throttle, int count, DualstreamException answer) {
    double given = draw;
    draw = 1; // Never refuse.
    for (int i = 0; i < count; i++) {
      assertNull(throttle.admit());
      throttle.answered(answer);
    }
    draw = given;
  }

  @Test
  void policiesRejectNonsense() {
    Duration window = Duration.ofSeconds(5);
    assertThrows(IllegalArgumentException.class, () -> new ThrottlePolicy(0.5, window, 20));
    assertThrows(IllegalArgumentException.class, () -> new ThrottlePolicy(-1, window, 20));
    assertThrows(IllegalArgumentException.class, () -> new ThrottlePolicy(Double.NaN, window, 20));
    assertThrows(
        IllegalArgumentException.class,
        () -> new ThrottlePolicy(Double.POSITIVE_INFINITY, window, 20));
    assertThrows(IllegalArgumentException.class, () -> new ThrottlePolicy(2, Duration.ZERO, 20));
    assertThrows(IllegalArgumentException.class, () -> new ThrottlePolicy(2, window, -1));
    assertTrue(new ThrottlePolicy(1, window, 0).enabled());
  }
}
