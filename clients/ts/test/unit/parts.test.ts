import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { backoffDelayMs } from "../../src/backoff.js";
import { DualstreamError, codeName, fieldPath, isCapacityRefusal, toDualstreamError } from "../../src/errors.js";
import { retryPublish } from "../../src/retry.js";
import { parseTarget } from "../../src/transport.js";
import { capacityRefusal } from "./refusals.js";
import { uuidv7 } from "../../src/uuid7.js";

describe("errors", () => {
  it("spells codes as gRPC does", () => {
    assert.equal(codeName(Code.InvalidArgument), "INVALID_ARGUMENT");
    assert.equal(codeName(Code.Unavailable), "UNAVAILABLE");
    assert.equal(codeName(Code.Canceled), "CANCELLED");
    assert.equal(codeName(Code.DeadlineExceeded), "DEADLINE_EXCEEDED");
  });

  it("reads the field path at the start of an INVALID_ARGUMENT message", () => {
    assert.equal(fieldPath("event.type: is required"), "event.type");
    assert.equal(fieldPath("events[3].source_type: contains ':'"), "events[3].source_type");
    assert.equal(fieldPath("events[0].attributes['Bad Name']: names must be ..."), "events[0].attributes['Bad Name']");
    assert.equal(fieldPath("resume_cursor: is not a cursor this sidecar issued"), "resume_cursor");
    assert.equal(fieldPath("request too large"), undefined);
    const error = new DualstreamError(Code.InvalidArgument, "events[1].source_id: is required");
    assert.equal(error.field, "events[1].source_id");
    assert.equal(error.message, "INVALID_ARGUMENT: events[1].source_id: is required");
    assert.equal(new DualstreamError(Code.Unavailable, "x: y").field, undefined);
  });

  it("translates connect errors, keeping them as the cause", () => {
    const original = new ConnectError("no token", Code.Unauthenticated);
    const error = toDualstreamError(original);
    assert.ok(error instanceof DualstreamError && error instanceof Error);
    assert.equal(error.code, Code.Unauthenticated);
    assert.equal(error.details, "no token");
    assert.equal(error.cause, original);
  });

  it("reports a connection lost under a call as UNAVAILABLE", () => {
    const reset = Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" });
    assert.equal(toDualstreamError(new ConnectError("reset", Code.Aborted, undefined, undefined, reset)).code, Code.Unavailable);
    const rst = new ConnectError("http/2 stream closed with error code CANCEL (0x8)", Code.Canceled);
    assert.equal(toDualstreamError(rst).code, Code.Unavailable);
    assert.equal(toDualstreamError(new ConnectError("This operation was aborted", Code.Canceled)).code, Code.Canceled);
    assert.equal(toDualstreamError(new ConnectError("a bug", Code.Internal)).code, Code.Internal);
  });
});

describe("retry hints", () => {
  it("reads RetryInfo's retry_delay first, else the pushback trailer", () => {
    assert.equal(toDualstreamError(capacityRefusal({ retryInfoMs: 1_500, pushback: "250" })).retryAfterMs, 1_500);
    assert.equal(toDualstreamError(capacityRefusal({ retryInfoMs: 0 })).retryAfterMs, 0);
    const pushbackOnly = toDualstreamError(capacityRefusal({ pushback: "250" }));
    assert.equal(pushbackOnly.retryAfterMs, 250);
    assert.equal(pushbackOnly.throttled, false);
    assert.ok(isCapacityRefusal(pushbackOnly));
  });

  it("is no hint when absent, malformed, negative, or on another code", () => {
    const tooLarge = toDualstreamError(new ConnectError("request too large", Code.ResourceExhausted));
    assert.equal(tooLarge.retryAfterMs, undefined);
    assert.ok(!isCapacityRefusal(tooLarge));
    assert.equal(toDualstreamError(capacityRefusal({ pushback: "-1" })).retryAfterMs, undefined);
    assert.equal(toDualstreamError(capacityRefusal({ pushback: "soon" })).retryAfterMs, undefined);
    const garbled = capacityRefusal({ pushback: "40" });
    garbled.details.push({ type: "google.rpc.RetryInfo", value: new Uint8Array([0x0a, 0x05, 0x08]) });
    assert.equal(toDualstreamError(garbled).retryAfterMs, 40, "a malformed RetryInfo falls back on the trailer");
    const unavailable = new ConnectError("down", Code.Unavailable, { "grpc-retry-pushback-ms": "250" });
    assert.equal(toDualstreamError(unavailable).retryAfterMs, undefined);
  });
});

describe("backoff", () => {
  it("grows by the multiplier up to the ceiling, jittered between half and all of it", () => {
    const options = { initialMs: 100, maxMs: 1_000, multiplier: 2 };
    assert.deepEqual(
      [0, 1, 2, 3, 4, 10].map((attempt) => backoffDelayMs(attempt, options, () => 1)),
      [100, 200, 400, 800, 1_000, 1_000],
    );
    assert.equal(backoffDelayMs(2, options, () => 0), 200);
    for (let i = 0; i < 1_000; i++) {
      const delay = backoffDelayMs(3, options);
      assert.ok(delay >= 400 && delay <= 800, `${delay}`);
    }
  });
});

describe("retryPublish", () => {
  const noSleep = async () => {};

  it("retries UNAVAILABLE up to maxAttempts calls in all", async () => {
    let calls = 0;
    const result = await retryPublish(
      async () => {
        calls += 1;
        if (calls < 3) throw new ConnectError("down", Code.Unavailable);
        return "ok";
      },
      { maxAttempts: 3 },
      undefined,
      { sleep: noSleep },
    );
    assert.equal(result, "ok");
    assert.equal(calls, 3);

    calls = 0;
    await assert.rejects(
      retryPublish(
        async () => {
          calls += 1;
          throw new ConnectError("down", Code.Unavailable);
        },
        { maxAttempts: 2 },
        undefined,
        { sleep: noSleep },
      ),
      (error: unknown) => error instanceof DualstreamError && error.code === Code.Unavailable,
    );
    assert.equal(calls, 2);
  });

  it("stops waiting when the signal aborts, as CANCELLED", async () => {
    const stop = new AbortController();
    let calls = 0;
    await assert.rejects(
      retryPublish(
        async () => {
          calls += 1;
          throw new ConnectError("down", Code.Unavailable);
        },
        { initialMs: 3_600_000, maxMs: 3_600_000 },
        stop.signal,
        { sleep: async () => stop.abort() },
      ),
      (error: unknown) => error instanceof DualstreamError && error.code === Code.Canceled,
    );
    assert.equal(calls, 1);
  });

  it("gives up once the time budget would be spent", async () => {
    let calls = 0;
    let clock = 0;
    await assert.rejects(
      retryPublish(
        async () => {
          calls += 1;
          throw new ConnectError("down", Code.Unavailable);
        },
        { maxAttempts: 100, initialMs: 1_000, maxMs: 1_000, maxElapsedMs: 2_500 },
        undefined,
        {
          sleep: async (ms) => {
            clock += ms;
          },
          random: () => 1,
          now: () => clock,
        },
      ),
      (error: unknown) => error instanceof DualstreamError && error.code === Code.Unavailable,
    );
    assert.equal(calls, 3, "a third wait of 1 s would end past the 2.5 s budget");
  });

  it("retries capacity refusals, waiting the longer of the hint and the backoff", async () => {
    const waits: number[] = [];
    let calls = 0;
    const result = await retryPublish(
      async () => {
        calls += 1;
        if (calls === 1) throw capacityRefusal({ retryInfoMs: 700 });
        if (calls === 2) throw capacityRefusal({ pushback: "10" });
        if (calls === 3) throw new DualstreamError(Code.ResourceExhausted, "not sent", { retryAfterMs: 300, throttled: true });
        return "ok";
      },
      { initialMs: 100, maxMs: 1_000 },
      undefined,
      { sleep: async (ms) => void waits.push(ms), random: () => 1 },
    );
    assert.equal(result, "ok");
    // Backoff ceilings 100, 200, 400 (the draw of 1 waits all of each).
    assert.deepEqual(waits, [700, 200, 400]);
  });

  it("does not retry a RESOURCE_EXHAUSTED without a hint, nor past the time budget", async () => {
    let calls = 0;
    await assert.rejects(
      retryPublish(
        async () => {
          calls += 1;
          throw new ConnectError("request too large", Code.ResourceExhausted);
        },
        {},
        undefined,
        { sleep: noSleep },
      ),
      (error: unknown) => error instanceof DualstreamError && error.code === Code.ResourceExhausted,
    );
    assert.equal(calls, 1);

    calls = 0;
    await assert.rejects(
      retryPublish(
        async () => {
          calls += 1;
          throw capacityRefusal({ pushback: "60000" });
        },
        { maxElapsedMs: 30_000 },
        undefined,
        { sleep: noSleep, now: () => 0 },
      ),
      (error: unknown) => error instanceof DualstreamError && error.retryAfterMs === 60_000,
    );
    assert.equal(calls, 1, "a 60 s hint does not fit a 30 s budget");
  });

  it("does not retry other codes", async () => {
    let calls = 0;
    await assert.rejects(
      retryPublish(
        async () => {
          calls += 1;
          throw new ConnectError("events[0].type: is required", Code.InvalidArgument);
        },
        {},
        undefined,
        { sleep: noSleep },
      ),
      (error: unknown) => error instanceof DualstreamError && error.field === "events[0].type",
    );
    assert.equal(calls, 1);
  });
});

describe("targets", () => {
  it("accepts host:port, [v6]:port and unix sockets", () => {
    assert.deepEqual(parseTarget("127.0.0.1:50051"), { baseUrl: "http://127.0.0.1:50051", socketPath: undefined });
    assert.deepEqual(parseTarget("[::1]:50051"), { baseUrl: "http://[::1]:50051", socketPath: undefined });
    assert.deepEqual(parseTarget("localhost:7"), { baseUrl: "http://localhost:7", socketPath: undefined });
    assert.deepEqual(parseTarget("unix:/run/ds.sock"), { baseUrl: "http://localhost", socketPath: "/run/ds.sock" });
    assert.deepEqual(parseTarget("unix:///run/ds.sock"), { baseUrl: "http://localhost", socketPath: "/run/ds.sock" });
    for (const bad of ["127.0.0.1", "http://x:1", "unix:", "a b:1"]) {
      assert.throws(() => parseTarget(bad), TypeError, bad);
    }
  });
});

describe("uuidv7", () => {
  it("is a version 7, RFC 9562 variant UUID carrying the time", () => {
    const id = uuidv7(0x0192_3456_789a);
    assert.match(id, /^01923456-789a-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.ok(uuidv7(1_000) < uuidv7(2_000));
    assert.notEqual(uuidv7(5), uuidv7(5));
  });
});
