import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import { DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE, DualstreamClient, DualstreamError } from "../../src/index.js";
import { EventService, type Event } from "../../src/gen/dualstream/v1/event_service_pb.js";
import { capacityRefusal } from "./refusals.js";

// An in-memory EventService (connect's router transport) scripted per test: the client's own
// logic (ids, retries, result merging) runs unchanged, without a network.
const fastRetry = { maxAttempts: 3, initialMs: 1, maxMs: 2 };

describe("DualstreamClient against a scripted service", () => {
  it("gives an event without id a UUIDv7 and retries UNAVAILABLE with the same id", async () => {
    const seen: string[] = [];
    const transport = createRouterTransport(({ service }) => {
      service(EventService, {
        publish(request) {
          seen.push(request.event?.id ?? "");
          if (seen.length < 3) throw new ConnectError("Kafka did not acknowledge", Code.Unavailable);
          return { id: request.event?.id ?? "", topic: "events", partition: 2, offset: 41n, notified: true };
        },
      });
    });
    const client = new DualstreamClient({ transport, retry: fastRetry });
    const result = await client.publish({ type: "t", sourceType: "user", sourceId: "octocat" });
    assert.equal(seen.length, 3);
    assert.equal(new Set(seen).size, 1);
    assert.match(seen[0] ?? "", /^[0-9a-f]{8}-[0-9a-f]{4}-7/);
    assert.deepEqual(result, { id: seen[0], topic: "events", partition: 2, offset: 41, notified: true });
  });

  it("sends again only the batch events answered UNAVAILABLE, and merges results in order", async () => {
    const calls: Event[][] = [];
    const transport = createRouterTransport(({ service }) => {
      service(EventService, {
        publishBatch(request) {
          calls.push(request.events);
          return {
            results: request.events.map((event, i) =>
              calls.length === 1 && i % 2 === 1
                ? { id: event.id, outcome: { case: "error" as const, value: { code: Code.Unavailable, message: "not acknowledged" } } }
                : {
                    id: event.id,
                    outcome: {
                      case: "published" as const,
                      value: { id: event.id, topic: "events", partition: 0, offset: BigInt(calls.length * 10 + i), notified: true },
                    },
                  },
            ),
          };
        },
      });
    });
    const client = new DualstreamClient({ transport, retry: fastRetry });
    const events = ["a", "b", "c", "d"].map((sourceId) => ({ type: "t", sourceType: "s", sourceId }));
    const results = await client.publishBatch(events);
    assert.equal(calls.length, 2);
    assert.deepEqual(
      calls[1]?.map((e) => e.sourceId),
      ["b", "d"],
    );
    assert.deepEqual(
      calls[1]?.map((e) => e.id),
      [calls[0]?.[1]?.id, calls[0]?.[3]?.id],
    );
    assert.deepEqual(
      results.map((r) => (r.ok ? r.result.offset : r.error.code)),
      [10, 20, 12, 21],
    );
  });

  it("reports events still unacknowledged after the last attempt as their results", async () => {
    const transport = createRouterTransport(({ service }) => {
      service(EventService, {
        publishBatch(request) {
          return {
            results: request.events.map((event) => ({
              id: event.id,
              outcome: { case: "error" as const, value: { code: Code.Unavailable, message: "Kafka is gone" } },
            })),
          };
        },
      });
    });
    const client = new DualstreamClient({ transport, retry: fastRetry });
    const results = await client.publishBatch([{ id: "x1", type: "t", sourceType: "s", sourceId: "a" }]);
    assert.equal(results.length, 1);
    const [only] = results;
    assert.ok(only && !only.ok);
    assert.equal(only.id, "x1");
    assert.equal(only.error.code, Code.Unavailable);
  });

  it("keeps the acknowledged events of a batch when a later attempt fails as a whole", async () => {
    let calls = 0;
    const transport = createRouterTransport(({ service }) => {
      service(EventService, {
        publishBatch(request) {
          calls += 1;
          if (calls > 1) throw new ConnectError("sidecar gone", Code.Unavailable);
          return {
            results: request.events.map((event, i) =>
              i === 0
                ? { id: event.id, outcome: { case: "published" as const, value: { id: event.id, topic: "events", offset: 5n } } }
                : { id: event.id, outcome: { case: "error" as const, value: { code: Code.Unavailable, message: "no ack" } } },
            ),
          };
        },
      });
    });
    const client = new DualstreamClient({ transport, retry: fastRetry });
    const results = await client.publishBatch(["a", "b"].map((sourceId) => ({ id: sourceId, type: "t", sourceType: "s", sourceId })));
    assert.equal(calls, 3);
    assert.deepEqual(
      results.map((r) => (r.ok ? `${r.id}@${r.result.offset}` : `${r.id}:${r.error.details}`)),
      ["a@5", "b:sidecar gone"],
    );
  });

  it("retries a capacity refusal with the same id, no sooner than its hint", async () => {
    const attempts: { id: string; at: number }[] = [];
    const transport = createRouterTransport(({ service }) => {
      service(EventService, {
        publish(request) {
          attempts.push({ id: request.event?.id ?? "", at: performance.now() });
          if (attempts.length === 1) throw capacityRefusal({ retryInfoMs: 40, pushback: "40" });
          if (attempts.length === 2) throw capacityRefusal({ pushback: "30" });
          return { id: request.event?.id ?? "", topic: "events", offset: 7n };
        },
      });
    });
    const client = new DualstreamClient({ transport, retry: fastRetry });
    const result = await client.publish({ type: "t", sourceType: "s", sourceId: "a" });
    assert.equal(result.offset, 7);
    assert.equal(attempts.length, 3);
    assert.equal(new Set(attempts.map((a) => a.id)).size, 1);
    // A lower bound only (a loaded machine waits longer); 1 ms for the timers' rounding.
    const [first, second, third] = attempts.map((a) => a.at) as [number, number, number];
    assert.ok(second - first >= 39, `waited ${second - first} ms of a 40 ms hint`);
    assert.ok(third - second >= 29, `waited ${third - second} ms of a 30 ms hint`);
  });

  it("reports a refusal's hint when retrying is off, and retries a refused batch whole", async () => {
    let batchCalls = 0;
    const transport = createRouterTransport(({ service }) => {
      service(EventService, {
        publish() {
          throw capacityRefusal({ retryInfoMs: 250 });
        },
        publishBatch(request) {
          batchCalls += 1;
          if (batchCalls === 1) throw capacityRefusal({ pushback: "1" });
          return {
            results: request.events.map((event, i) => ({
              id: event.id,
              outcome: { case: "published" as const, value: { id: event.id, topic: "events", offset: BigInt(i) } },
            })),
          };
        },
      });
    });
    const client = new DualstreamClient({ transport, retry: { maxAttempts: 1 } });
    await assert.rejects(client.publish({ type: "t", sourceType: "s", sourceId: "a" }), (error: unknown) => {
      assert.ok(error instanceof DualstreamError);
      assert.equal(error.codeName, "RESOURCE_EXHAUSTED");
      assert.equal(error.retryAfterMs, 250);
      assert.equal(error.throttled, false);
      return true;
    });
    const retrying = new DualstreamClient({ transport, retry: fastRetry });
    const results = await retrying.publishBatch(["a", "b"].map((sourceId) => ({ type: "t", sourceType: "s", sourceId })));
    assert.equal(batchCalls, 2);
    assert.deepEqual(
      results.map((r) => r.ok && r.result.offset),
      [0, 1],
    );
  });

  it("throttles: refuses calls itself while the sidecar refuses them, unless turned off", async () => {
    let received = 0;
    const transport = createRouterTransport(({ service }) => {
      service(EventService, {
        publish() {
          received += 1;
          throw capacityRefusal({ retryInfoMs: 80 });
        },
      });
    });
    const outcomes = async (client: DualstreamClient) => {
      const errors: DualstreamError[] = [];
      for (let i = 0; i < 100; i++) {
        await client.publish({ type: "t", sourceType: "s", sourceId: "a" }).catch((error: DualstreamError) => errors.push(error));
      }
      return errors;
    };
    const errors = await outcomes(new DualstreamClient({ transport, retry: { maxAttempts: 1 }, throttle: { minRequests: 10 } }));
    const throttled = errors.filter((error) => error.throttled);
    assert.equal(errors.length, 100);
    assert.equal(received + throttled.length, 100, "a throttled call is never sent");
    // p reaches 10/11 after the first 10 and grows: the odds of fewer than 50 held back are nil.
    assert.ok(throttled.length > 50, `${throttled.length} throttled`);
    assert.ok(throttled.every((error) => error.code === Code.ResourceExhausted && error.retryAfterMs === 80));
    assert.match(throttled[0]?.message ?? "", /^RESOURCE_EXHAUSTED: not sent: the sidecar refused \d+ of this client's last \d+ calls/);

    received = 0;
    const unthrottled = await outcomes(new DualstreamClient({ transport, retry: { maxAttempts: 1 }, throttle: false }));
    assert.equal(received, 100);
    assert.ok(unthrottled.every((error) => !error.throttled && error.retryAfterMs === 80));
  });

  it("raises INVALID_ARGUMENT with the field path, without retrying", async () => {
    let calls = 0;
    const transport = createRouterTransport(({ service }) => {
      service(EventService, {
        publishBatch() {
          calls += 1;
          throw new ConnectError("events[1].source_type: contains ':'", Code.InvalidArgument);
        },
      });
    });
    const client = new DualstreamClient({ transport, retry: fastRetry });
    await assert.rejects(client.publishBatch([{ type: "t", sourceType: "s", sourceId: "a" }]), (error: unknown) => {
      assert.ok(error instanceof DualstreamError);
      assert.equal(error.codeName, "INVALID_ARGUMENT");
      assert.equal(error.field, "events[1].source_type");
      return true;
    });
    assert.equal(calls, 1);
  });

  it("subscribes with the options it was given and resumes with the last cursor", async () => {
    const requests: { resumeCursor: string; max: number; policy: number; sources: string[] }[] = [];
    const transport = createRouterTransport(({ service }) => {
      service(EventService, {
        async *subscribe(request) {
          requests.push({
            resumeCursor: request.resumeCursor,
            max: request.maxNotificationsPerMessage,
            policy: request.slowConsumerPolicy,
            sources: request.sources.map((s) => `${s.sourceType}:${s.sourceId}`),
          });
          const n = requests.length;
          yield { message: { case: "subscribed", value: { channels: [], cursor: `c${n}0` } } };
          yield {
            message: {
              case: "notification",
              value: { id: `e${n}`, sourceType: "user", sourceId: "x", cursor: `c${n}1`, traceparent: `00-${n}` },
            },
          };
          if (n % 2 === 1) throw new ConnectError("sidecar restarting", Code.Unavailable);
          await new Promise(() => {});
        },
      });
    });
    const client = new DualstreamClient({ transport, reconnect: { initialMs: 1, maxMs: 2 } });
    const subscription = client.subscribe({
      sources: [["user", "*"], { sourceType: "repo", sourceId: "r" }],
      policy: "replay",
      maxNotificationsPerMessage: 64,
    });
    const notes: string[] = [];
    for await (const message of subscription) {
      if (message.kind === "notification") {
        notes.push(`${message.id}@${message.traceparent}`);
        if (notes.length === 2) subscription.close();
      }
    }
    assert.deepEqual(notes, ["e1@00-1", "e2@00-2"]);
    assert.deepEqual(requests[0], { resumeCursor: "", max: 64, policy: 3, sources: ["user:*", "repo:r"] });
    assert.equal(requests[1]?.resumeCursor, "c11");
    assert.equal(subscription.cursor, "c21");
    assert.equal(subscription.reconnects, 1);
    assert.throws(() => subscription[Symbol.asyncIterator](), TypeError);
    assert.equal(client.subscribe({ sources: [["user", "x"]], resumeCursor: "c9" }).cursor, "c9");

    // Policy close: the break ends the loop with its error, and the cursor says where to resume.
    const closing = client.subscribe({ sources: [["user", "*"]], policy: "close" });
    const closed: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const message of closing) closed.push(message.kind);
      })(),
      (error: unknown) => error instanceof DualstreamError && error.code === Code.Unavailable,
    );
    assert.deepEqual(closed, ["subscribed", "notification"]);
    assert.equal(closing.cursor, "c31");
    assert.equal(requests.length, 3);
    assert.equal(requests[2]?.max, DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE, "batches unless told otherwise");
    assert.equal(DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE, 64);
  });
});
