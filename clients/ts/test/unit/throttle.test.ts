import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { DualstreamError } from "../../src/errors.js";
import { AdaptiveThrottle } from "../../src/throttle.js";

// The throttle on a hand-moved clock and a chosen random draw (1 by default: never below p,
// so nothing is refused until a test draws lower): every decision is exact.
function throttleAt(options: ConstructorParameters<typeof AdaptiveThrottle>[0] = {}, draw = 1) {
  const clock = { ms: 0, draw };
  const throttle = new AdaptiveThrottle(options, { now: () => clock.ms, random: () => clock.draw });
  return { throttle, clock };
}

const capacityRefusal = (retryAfterMs: number) =>
  new DualstreamError(Code.ResourceExhausted, "past capacity", { retryAfterMs });

/** `count` attempts let through and answered with `answer` (undefined: OK). */
function answer(throttle: AdaptiveThrottle, count: number, error?: DualstreamError): void {
  for (let i = 0; i < count; i++) {
    assert.equal(throttle.admit(), undefined, `attempt ${i} was let through`);
    throttle.record(error);
  }
}

describe("AdaptiveThrottle", () => {
  it("never refuses under minRequests, whatever the sidecar answered", () => {
    const { throttle } = throttleAt({ minRequests: 20 }, 0);
    answer(throttle, 19, capacityRefusal(50));
    assert.equal(throttle.refusalProbability(), 0);
    assert.equal(throttle.admit(), undefined, "the 20th attempt: 19 requests in the window before it");
    throttle.record(capacityRefusal(50));
    assert.ok(throttle.refusalProbability() > 0.9);
  });

  it("never refuses while the sidecar accepts everything", () => {
    const { throttle } = throttleAt({}, 0);
    answer(throttle, 500);
    assert.equal(throttle.refusalProbability(), 0);
  });

  it("holds nothing back before minRequests answers, then counts calls still waiting against the sidecar", () => {
    const { throttle } = throttleAt({ minRequests: 20 }, 0);
    for (let i = 0; i < 40; i++) {
      assert.equal(throttle.admit(), undefined, "a burst not yet answered is sent");
    }
    for (let i = 0; i < 20; i++) throttle.record(undefined);
    // 40 requests, 20 accepted: the 20 still waiting weigh against the sidecar.
    assert.ok(Math.abs(throttle.refusalProbability() - (40 - 1.2 * 20) / 41) < 1e-12);
    assert.ok(throttle.admit()?.throttled);
  });

  it("counts every answer but a capacity refusal, an expired deadline or a cancel as an accept", () => {
    const { throttle } = throttleAt({ ratio: 1, minRequests: 0 });
    answer(throttle, 10, new DualstreamError(Code.Unavailable, "Kafka is gone"));
    answer(throttle, 10, new DualstreamError(Code.InvalidArgument, "event.type: is required"));
    answer(throttle, 10, new DualstreamError(Code.ResourceExhausted, "request too large")); // no hint
    assert.equal(throttle.refusalProbability(), 0);
    answer(throttle, 10, new DualstreamError(Code.DeadlineExceeded, "deadline"));
    answer(throttle, 10, new DualstreamError(Code.Canceled, "aborted"));
    assert.equal(throttle.refusalProbability(), (50 - 30) / 51);
  });

  it("refuses with p = (requests - ratio * accepts) / (requests + 1)", () => {
    const { throttle } = throttleAt();
    answer(throttle, 100, capacityRefusal(250));
    assert.equal(throttle.refusalProbability(), 100 / 101);

    const half = throttleAt({ ratio: 1.2 }).throttle;
    answer(half, 50);
    answer(half, 50, capacityRefusal(250));
    assert.ok(Math.abs(half.refusalProbability() - (100 - 60) / 101) < 1e-12);
  });

  it("lets an attempt through when the draw is at or above p, and counts both as requests", () => {
    const { throttle, clock } = throttleAt({ ratio: 1.2, minRequests: 0 });
    answer(throttle, 50);
    answer(throttle, 50, capacityRefusal(250));
    const p = throttle.refusalProbability();
    clock.draw = p; // not below p: sent
    assert.equal(throttle.admit(), undefined);
    throttle.record(undefined);
    clock.draw = 0;
    assert.ok(throttle.admit()?.throttled);
    // 102 requests and 51 accepts now.
    assert.ok(Math.abs(throttle.refusalProbability() - (102 - 1.2 * 51) / 103) < 1e-12);
  });

  it("forgets buckets older than the window", () => {
    const { throttle, clock } = throttleAt({ windowMs: 5_000 });
    answer(throttle, 100, capacityRefusal(250)); // all at t = 0
    clock.ms = 4_999;
    assert.equal(throttle.refusalProbability(), 100 / 101, "t = 0 is still inside the window");
    answer(throttle, 30); // t = 4,999: the last bucket of the window
    clock.ms = 5_000;
    assert.equal(throttle.refusalProbability(), 0, "only the 30 accepted requests remain");
    clock.ms = 9_999;
    assert.equal(throttle.refusalProbability(), 0);
    answer(throttle, 19, capacityRefusal(250));
    clock.ms = 10_000;
    assert.equal(throttle.refusalProbability(), 0, "19 requests left: under minRequests");
  });

  it("refuses locally with the last hint and the window's numbers in its message", () => {
    const { throttle, clock } = throttleAt();
    answer(throttle, 20);
    answer(throttle, 70, capacityRefusal(300));
    answer(throttle, 10, capacityRefusal(250));
    clock.draw = 0;
    const refusal = throttle.admit();
    assert.ok(refusal instanceof DualstreamError);
    assert.equal(refusal.code, Code.ResourceExhausted);
    assert.equal(refusal.throttled, true);
    assert.equal(refusal.retryAfterMs, 250);
    assert.equal(
      refusal.details,
      "not sent: the sidecar refused 80 of this client's last 100 calls as past capacity, so the client holds calls back (client-side throttling); retry in 250 ms",
    );
    // A local refusal counts as a request, never as an accept or a refusal by the sidecar.
    assert.match(throttle.admit()?.details ?? "", /refused 80 of this client's last 101 calls/);

    // Once the sidecar's hint is older than the window, the client says 100 ms.
    clock.ms = 5_000;
    clock.draw = 1;
    answer(throttle, 30, new DualstreamError(Code.DeadlineExceeded, "deadline"));
    clock.draw = 0;
    assert.equal(throttle.admit()?.retryAfterMs, 100);
  });

  it("rejects options it cannot work with, naming them", () => {
    assert.throws(() => new AdaptiveThrottle({ ratio: 0.5 }), /throttle\.ratio 0\.5/);
    assert.throws(() => new AdaptiveThrottle({ ratio: Number.NaN }), /throttle\.ratio/);
    assert.throws(() => new AdaptiveThrottle({ windowMs: 0 }), /throttle\.windowMs 0/);
    assert.throws(() => new AdaptiveThrottle({ minRequests: 2.5 }), /throttle\.minRequests 2\.5/);
  });
});
