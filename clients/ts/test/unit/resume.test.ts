import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { DualstreamError } from "../../src/errors.js";
import {
  GapReason,
  NotificationSchema,
  type SubscribeRequest,
  SubscribeRequestSchema,
  type SubscribeResponse,
  SubscribeResponseSchema,
} from "../../src/gen/dualstream/v1/event_service_pb.js";
import type { StreamMessage } from "../../src/messages.js";
import { type OpenStream, type ResumeState, resumingStream } from "../../src/resume.js";

// A scripted sidecar: each connection plays its script of messages, then ends with the
// script's error (or cleanly). Requests are recorded so the resume cursor can be checked.
type Script = { messages: SubscribeResponse[]; error?: unknown; hang?: boolean };

function scriptedOpen(scripts: Script[]): { open: OpenStream; requests: SubscribeRequest[] } {
  const requests: SubscribeRequest[] = [];
  const open: OpenStream = (request, signal) => {
    requests.push(request);
    const script = scripts.shift();
    assert.ok(script, `connection ${requests.length} was not scripted`);
    return (async function* () {
      for (const message of script.messages) {
        yield message;
      }
      if (script.hang) {
        if (!signal.aborted) {
          await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
        }
        throw new ConnectError("aborted", Code.Canceled);
      }
      if (script.error !== undefined) {
        throw script.error;
      }
    })();
  };
  return { open, requests };
}

const subscribed = (cursor: string): SubscribeResponse =>
  create(SubscribeResponseSchema, { message: { case: "subscribed", value: { channels: ["events:a:*"], cursor } } });

const notification = (id: string, offset: number, cursor: string) =>
  create(NotificationSchema, { id, sourceType: "a", sourceId: "1", partition: 0, offset: BigInt(offset), cursor });

const single = (id: string, offset: number, cursor: string): SubscribeResponse =>
  create(SubscribeResponseSchema, { message: { case: "notification", value: notification(id, offset, cursor) } });

const unavailable = () => new ConnectError("Kafka is gone", Code.Unavailable);

const request = create(SubscribeRequestSchema, { sources: [{ sourceType: "a", sourceId: "*" }] });

const noSleep = { sleep: async () => {}, random: () => 0.5 };

async function collect(stream: AsyncIterable<StreamMessage>, limit = Number.POSITIVE_INFINITY): Promise<StreamMessage[]> {
  const seen: StreamMessage[] = [];
  for await (const message of stream) {
    seen.push(message);
    if (seen.length >= limit) {
      break;
    }
  }
  return seen;
}

const ids = (messages: StreamMessage[]) =>
  messages.flatMap((m) => (m.kind === "notification" ? [m.id] : []));

describe("resumingStream", () => {
  it("resumes from the cursor of the last message handed over, once per break", async () => {
    const { open, requests } = scriptedOpen([
      { messages: [subscribed("c0"), single("e1", 1, "c1"), single("e2", 2, "c2")], error: unavailable() },
      { messages: [subscribed("c2"), single("e3", 3, "c3")], error: new ConnectError("reset", Code.Internal) },
      { messages: [subscribed("c3"), single("e4", 4, "c4")], hang: true },
    ]);
    const state: ResumeState = { cursor: "", connections: 0, lastError: undefined };
    const messages = await collect(resumingStream(open, request, { ...noSleep, state }), 7);
    assert.deepEqual(ids(messages), ["e1", "e2", "e3", "e4"]);
    assert.deepEqual(
      messages.filter((m) => m.kind === "subscribed").map((m) => (m.kind === "subscribed" ? m.resumed : null)),
      [false, true, true],
    );
    assert.deepEqual(
      requests.map((r) => r.resumeCursor),
      ["", "c2", "c3"],
    );
    assert.equal(state.cursor, "c4");
    assert.equal(state.connections, 3);
    assert.equal(state.lastError?.code, Code.Internal);
  });

  it("replaces a start position by the cursor once it has one", async () => {
    const withStart = create(SubscribeRequestSchema, {
      sources: [{ sourceType: "a", sourceId: "*" }],
      start: { position: { case: "earliest", value: true } },
    });
    const { open, requests } = scriptedOpen([
      { messages: [], error: unavailable() }, // before `subscribed`: nothing to resume from yet
      { messages: [subscribed("c0"), single("e1", 1, "c1")], error: unavailable() },
      { messages: [subscribed("c1")], hang: true },
    ]);
    await collect(resumingStream(open, withStart, noSleep), 3);
    assert.equal(requests[0]?.start?.position.case, "earliest");
    assert.equal(requests[1]?.start?.position.case, "earliest");
    assert.equal(requests[2]?.start, undefined);
    assert.equal(requests[2]?.resumeCursor, "c1");
  });

  it("keeps an initial resume cursor until the stream hands over a newer one", async () => {
    const fromCursor = create(SubscribeRequestSchema, { sources: [{ sourceType: "a", sourceId: "1" }], resumeCursor: "c9" });
    const { open, requests } = scriptedOpen([
      { messages: [], error: unavailable() },
      { messages: [subscribed("c9")], hang: true },
    ]);
    const state: ResumeState = { cursor: "c9", connections: 0, lastError: undefined };
    await collect(resumingStream(open, fromCursor, { ...noSleep, state }), 1);
    assert.deepEqual(requests.map((r) => r.resumeCursor), ["c9", "c9"]);
  });

  it("unpacks a NotificationBatch, each notification with its own cursor", async () => {
    const batch = create(SubscribeResponseSchema, {
      message: {
        case: "notifications",
        value: { notifications: [notification("e1", 1, "c1"), notification("e2", 2, "c2"), notification("e3", 3, "c3")] },
      },
    });
    const { open, requests } = scriptedOpen([
      { messages: [subscribed("c0"), batch], error: unavailable() },
      { messages: [subscribed("c3"), single("e4", 4, "c4")], hang: true },
    ]);
    const messages = await collect(resumingStream(open, request, noSleep), 6);
    assert.deepEqual(ids(messages), ["e1", "e2", "e3", "e4"]);
    assert.deepEqual(
      messages.flatMap((m) => (m.kind === "notification" ? [m.cursor] : [])),
      ["c1", "c2", "c3", "c4"],
    );
    assert.equal(requests[1]?.resumeCursor, "c3");
  });

  it("hands over gaps and caught_up and resumes from a gap's cursor", async () => {
    const gap = create(SubscribeResponseSchema, {
      message: { case: "gap", value: { reason: GapReason.REDIS_OUTAGE, missed: 0n, cursor: "g1" } },
    });
    const caughtUp = create(SubscribeResponseSchema, { message: { case: "caughtUp", value: { replayed: 7n, cursor: "u1" } } });
    const { open, requests } = scriptedOpen([
      { messages: [subscribed("c0"), gap], error: unavailable() },
      { messages: [subscribed("g1"), caughtUp], hang: true },
    ]);
    const messages = await collect(resumingStream(open, request, noSleep), 4);
    assert.deepEqual(messages[1], { kind: "gap", reason: "redis_outage", missed: 0, cursor: "g1", since: undefined, until: undefined });
    assert.deepEqual(messages[3], { kind: "caughtUp", replayed: 7, cursor: "u1" });
    assert.equal(requests[1]?.resumeCursor, "g1");
  });

  it("reconnects when the sidecar ends the stream cleanly", async () => {
    const { open, requests } = scriptedOpen([
      { messages: [subscribed("c0"), single("e1", 1, "c1")] },
      { messages: [subscribed("c1")], hang: true },
    ]);
    const messages = await collect(resumingStream(open, request, noSleep), 3);
    assert.equal(messages.length, 3);
    assert.equal(requests[1]?.resumeCursor, "c1");
  });

  for (const code of [Code.Unauthenticated, Code.InvalidArgument, Code.ResourceExhausted, Code.PermissionDenied]) {
    it(`throws ${Code[code]} at once: a new connection would get the same answer`, async () => {
      const { open, requests } = scriptedOpen([{ messages: [], error: new ConnectError("no", code) }]);
      await assert.rejects(collect(resumingStream(open, request, noSleep)), (error: unknown) => {
        assert.ok(error instanceof DualstreamError);
        assert.equal(error.code, code);
        return true;
      });
      assert.equal(requests.length, 1);
    });
  }

  it("with resume off, ends at the first break: an error throws, a clean end returns", async () => {
    const failing = scriptedOpen([{ messages: [subscribed("c0"), single("e1", 1, "c1")], error: unavailable() }]);
    const seen: StreamMessage[] = [];
    await assert.rejects(
      (async () => {
        for await (const message of resumingStream(failing.open, request, { ...noSleep, resume: false })) seen.push(message);
      })(),
      (error: unknown) => error instanceof DualstreamError && error.code === Code.Unavailable,
    );
    assert.equal(seen.length, 2);
    assert.equal(failing.requests.length, 1);

    const ending = scriptedOpen([{ messages: [subscribed("c0")] }]);
    assert.equal((await collect(resumingStream(ending.open, request, { ...noSleep, resume: false }))).length, 1);
    assert.equal(ending.requests.length, 1);
  });

  it("gives up after maxAttempts failures in a row, counting from the last subscribed", async () => {
    const { open, requests } = scriptedOpen([
      { messages: [], error: unavailable() },
      { messages: [], error: unavailable() },
      { messages: [subscribed("c0")], error: unavailable() }, // reached subscribed: count restarts
      { messages: [], error: unavailable() },
      { messages: [], error: unavailable() },
    ]);
    const seen: StreamMessage[] = [];
    const stream = resumingStream(open, request, { ...noSleep, reconnect: { maxAttempts: 3 } });
    await assert.rejects(
      (async () => {
        for await (const message of stream) seen.push(message);
      })(),
      (error: unknown) => error instanceof DualstreamError && error.code === Code.Unavailable,
    );
    assert.equal(requests.length, 5);
    assert.equal(seen.length, 1);
  });

  it("gives up once reconnecting has failed for maxElapsedMs, counting from the first failure", async () => {
    let clock = 0;
    const { open, requests } = scriptedOpen([
      { messages: [], error: unavailable() }, // fails at 0; waits 1,000
      { messages: [subscribed("c0")], error: unavailable() }, // reached subscribed; fails at 1,000
      { messages: [], error: unavailable() }, // 2,000: a new run of failures started at 1,000
      { messages: [], error: unavailable() }, // 3,000: the next wait would end at 4,000 > 1,000 + 2,500
    ]);
    const stream = resumingStream(open, request, {
      sleep: async (ms) => {
        clock += ms;
      },
      random: () => 1,
      now: () => clock,
      reconnect: { initialMs: 1_000, maxMs: 1_000, maxElapsedMs: 2_500 },
    });
    await assert.rejects(collect(stream), (error: unknown) => error instanceof DualstreamError);
    assert.equal(requests.length, 4);
  });

  it("waits a growing, jittered backoff between attempts and reports each one", async () => {
    const { open } = scriptedOpen([
      { messages: [], error: unavailable() },
      { messages: [], error: unavailable() },
      { messages: [], error: unavailable() },
      { messages: [subscribed("c0")], hang: true },
    ]);
    const waits: number[] = [];
    const reported: number[] = [];
    const stream = resumingStream(open, request, {
      sleep: async (ms) => {
        waits.push(ms);
      },
      random: () => 1,
      reconnect: { initialMs: 100, maxMs: 300, onReconnect: ({ attempt }) => reported.push(attempt) },
    });
    await collect(stream, 1);
    assert.deepEqual(waits, [100, 200, 300]);
    assert.deepEqual(reported, [1, 2, 3]);
  });

  it("ends quietly when the signal aborts, during a stream or a backoff", async () => {
    const stop = new AbortController();
    const { open } = scriptedOpen([{ messages: [subscribed("c0")], hang: true }]);
    const seen: StreamMessage[] = [];
    for await (const message of resumingStream(open, request, { signal: stop.signal })) {
      seen.push(message);
      stop.abort();
    }
    assert.equal(seen.length, 1);

    const stopDuringBackoff = new AbortController();
    const failing = scriptedOpen([{ messages: [], error: unavailable() }]);
    const stream = resumingStream(failing.open, request, {
      signal: stopDuringBackoff.signal,
      reconnect: { initialMs: 3_600_000, maxMs: 3_600_000, maxElapsedMs: Number.POSITIVE_INFINITY },
    });
    const done = collect(stream);
    setImmediate(() => stopDuringBackoff.abort());
    assert.deepEqual(await done, []);
  });

  it("cancels the call when the reader stops early", async () => {
    let aborted = false;
    const open: OpenStream = (_request, signal) =>
      (async function* () {
        signal.addEventListener("abort", () => {
          aborted = true;
        });
        yield subscribed("c0");
        yield single("e1", 1, "c1");
        await new Promise(() => {});
      })();
    await collect(resumingStream(open, request, noSleep), 1);
    assert.ok(aborted);
  });
});
