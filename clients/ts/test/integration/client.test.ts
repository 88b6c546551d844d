// Against the real stack (Kafka, Redis, four sidecars) that `with-stack` starts on free ports.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { Code, DualstreamClient, DualstreamError, type Notification } from "../../src/index.js";
import { CuttableProxy, PATIENCE_MS, iterate, notifications, readUntil, stackEnv, unique } from "./helpers.js";

const TEST = { timeout: 4 * PATIENCE_MS };
let client: DualstreamClient;

before(() => {
  client = new DualstreamClient({ target: stackEnv("DUALSTREAM_TEST_TARGET"), timeoutMs: PATIENCE_MS });
});

after(() => {
  client.close();
});

describe("publishing", () => {
  it("publishes an event, with a client-assigned UUIDv7 id, and Kafka's position", TEST, async () => {
    const sourceId = unique("octocat");
    const first = await client.publish({ type: "user.starred", sourceType: "user", sourceId, data: '{"repo":"hello"}' });
    assert.match(first.id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(first.topic, "events");
    assert.ok(first.partition >= 0);
    assert.ok(first.offset >= 0);
    assert.equal(first.notified, true);

    const second = await client.publish({
      id: unique("given"),
      type: "user.starred",
      sourceType: "user",
      sourceId,
      contentType: "application/json",
      time: new Date("2026-11-28T12:00:00Z"),
      attributes: { tenant: "acme" },
    });
    assert.match(second.id, /^given-/);
    assert.equal(second.partition, first.partition, "one source, one partition");
    assert.ok(second.offset > first.offset);
  });

  it("publishes a batch, one result per event in order", TEST, async () => {
    const sourceId = unique("batch");
    const results = await client.publishBatch(
      [0, 1, 2].map((n) => ({ type: "t.batched", sourceType: "user", sourceId, data: `${n}` })),
    );
    assert.equal(results.length, 3);
    const offsets = results.map((r) => {
      assert.ok(r.ok, r.ok ? "" : r.error.message);
      assert.equal(r.id, r.result.id);
      return r.result.offset;
    });
    assert.ok(offsets[0]! < offsets[1]! && offsets[1]! < offsets[2]!);
  });

  it("rejects a batch with one bad event as INVALID_ARGUMENT naming the field, writing nothing", TEST, async () => {
    const sourceId = unique("bad-batch");
    const events = [
      { type: "t.ok", sourceType: "user", sourceId },
      { type: "t.bad", sourceType: "user:colon", sourceId },
      { type: "t.ok", sourceType: "user", sourceId },
    ];
    const subscription = client.subscribe({ sources: [["user", sourceId]], start: "earliest" });
    const messages = iterate(subscription);
    await assert.rejects(client.publishBatch(events), (error: unknown) => {
      assert.ok(error instanceof DualstreamError, String(error));
      assert.equal(error.code, Code.InvalidArgument);
      assert.equal(error.codeName, "INVALID_ARGUMENT");
      assert.equal(error.field, "events[1].source_type");
      assert.match(error.message, /^INVALID_ARGUMENT: events\[1\]\.source_type: /);
      return true;
    });
    // Nothing was written: a replay of the source from the earliest offset finds nothing.
    const seen = await readUntil(messages, (s) => s.some((m) => m.kind === "caughtUp"), "caught_up");
    assert.deepEqual(notifications(seen), []);
    subscription.close();
  });

  it("refuses a call without the token, and accepts it with the token", TEST, async () => {
    const target = stackEnv("DUALSTREAM_TEST_AUTH_TARGET");
    const event = { type: "t.auth", sourceType: "user", sourceId: unique("auth") };
    const anonymous = new DualstreamClient({ target, timeoutMs: PATIENCE_MS });
    const wrong = new DualstreamClient({ target, token: "not-the-token", timeoutMs: PATIENCE_MS });
    const authorized = new DualstreamClient({ target, token: stackEnv("DUALSTREAM_TEST_TOKEN"), timeoutMs: PATIENCE_MS });
    try {
      for (const refused of [anonymous, wrong]) {
        await assert.rejects(refused.publish(event), (error: unknown) => {
          assert.ok(error instanceof DualstreamError);
          assert.equal(error.code, Code.Unauthenticated);
          return true;
        });
      }
      // A subscription refused for auth throws at once instead of reconnecting forever.
      const subscription = anonymous.subscribe({ sources: [["user", "*"]] });
      await assert.rejects(
        readUntil(iterate(subscription), () => false, "an error"),
        (error: unknown) => error instanceof DualstreamError && error.code === Code.Unauthenticated,
      );
      const result = await authorized.publish(event);
      assert.ok(result.offset >= 0);
    } finally {
      anonymous.close();
      wrong.close();
      authorized.close();
    }
  });
});

describe("subscribing", () => {
  it("follows every source of a type with a wildcard, each source in order", TEST, async () => {
    const sourceType = unique("wild").replace(/-/g, "");
    const subscription = client.subscribe({ sources: [[sourceType, "*"]] });
    const messages = iterate(subscription);
    const [live] = await readUntil(messages, (s) => s.length === 1, "subscribed");
    assert.equal(live?.kind, "subscribed");

    const published: string[] = [];
    for (let n = 0; n < 6; n++) {
      const result = await client.publish({ type: "t.wild", sourceType, sourceId: `s${n % 2}` });
      published.push(result.id);
    }
    const seen = notifications(await readUntil(messages, (s) => notifications(s).length >= 6, "6 notifications"));
    assert.deepEqual(seen.map((n) => n.id).sort(), [...published].sort());
    for (const sourceId of ["s0", "s1"]) {
      const ofSource = seen.filter((n) => n.sourceId === sourceId);
      assert.deepEqual(
        ofSource.map((n) => n.id),
        published.filter((_, i) => `s${i % 2}` === sourceId),
      );
      assert.ok(ofSource.every((n, i) => i === 0 || n.offset > ofSource[i - 1]!.offset));
    }
    for (const notification of seen) {
      assert.equal(notification.replayed, false);
      assert.equal(typeof notification.traceparent, "string");
      assert.notEqual(notification.cursor, "");
    }
    subscription.close();
  });

  it("resumes from a cursor: exactly the events after it, then caught_up, then live", TEST, async () => {
    const sourceId = unique("resume");
    const first = client.subscribe({ sources: [["user", sourceId]] });
    const firstMessages = iterate(first);
    await readUntil(firstMessages, (s) => s.length === 1, "subscribed");
    const ids: string[] = [];
    for (let n = 0; n < 3; n++) {
      ids.push((await client.publish({ type: "t.resume", sourceType: "user", sourceId })).id);
    }
    const [afterFirst] = notifications(await readUntil(firstMessages, (s) => notifications(s).length >= 1, "a notification"));
    assert.equal(afterFirst?.id, ids[0]);
    const cursor = first.cursor;
    assert.equal(cursor, afterFirst?.cursor);
    first.close();

    ids.push((await client.publish({ type: "t.resume", sourceType: "user", sourceId })).id);
    const resumed = client.subscribe({ sources: [["user", sourceId]], resumeCursor: cursor, includeData: true });
    const resumedMessages = iterate(resumed);
    const replay = await readUntil(resumedMessages, (s) => s.some((m) => m.kind === "caughtUp"), "caught_up");
    assert.deepEqual(
      notifications(replay).map((n) => [n.id, n.replayed]),
      ids.slice(1).map((id) => [id, true]),
    );
    const caughtUp = replay.at(-1);
    assert.ok(caughtUp?.kind === "caughtUp" && caughtUp.replayed === 3);
    const hydrated = notifications(replay)[0] as Notification;
    assert.equal(hydrated.event?.type, "t.resume");
    assert.equal(hydrated.event?.sourceId, sourceId);

    const live = (await client.publish({ type: "t.resume", sourceType: "user", sourceId, data: "live!" })).id;
    const after = notifications(await readUntil(resumedMessages, (s) => notifications(s).length >= 1, "the live event"));
    assert.equal(after[0]?.id, live);
    assert.equal(after[0]?.replayed, false);
    assert.equal(new TextDecoder().decode(after[0]?.event?.data), "live!");
    resumed.close();
  });

  it("unpacks NotificationBatch messages when it opts in", TEST, async () => {
    const sourceId = unique("batched");
    const results = await client.publishBatch(
      Array.from({ length: 40 }, (_, n) => ({ type: "t.backlog", sourceType: "user", sourceId, data: `${n}` })),
    );
    const subscription = client.subscribe({ sources: [["user", sourceId]], start: "earliest", maxNotificationsPerMessage: 16 });
    const seen = notifications(
      await readUntil(iterate(subscription), (s) => s.some((m) => m.kind === "caughtUp"), "caught_up"),
    );
    assert.deepEqual(
      seen.map((n) => n.id),
      results.map((r) => r.id),
    );
    assert.equal(new Set(seen.map((n) => n.cursor)).size, 40, "each notification keeps its own cursor");
    subscription.close();
  });

  it("resumes by itself when the connection breaks: every event once, in order", TEST, async () => {
    const proxy = await CuttableProxy.start(stackEnv("DUALSTREAM_TEST_TARGET"));
    const viaProxy = new DualstreamClient({ target: proxy.target, reconnect: { initialMs: 50, maxMs: 1_000 } });
    const sourceId = unique("cut");
    try {
      const subscription = viaProxy.subscribe({ sources: [["user", sourceId]] });
      const messages = iterate(subscription);
      await readUntil(messages, (s) => s.length === 1, "subscribed");
      const ids: string[] = [];
      const publishSome = async (count: number) => {
        for (let n = 0; n < count; n++) {
          ids.push((await client.publish({ type: "t.cut", sourceType: "user", sourceId })).id);
        }
      };
      await publishSome(3);
      const seen = await readUntil(messages, (s) => notifications(s).length >= 3, "3 notifications");
      proxy.cut();
      await publishSome(3); // while the subscription is cut off: only a resume can deliver these
      seen.push(...(await readUntil(messages, (s) => notifications(s).length >= 3, "3 resumed notifications")));
      await publishSome(2);
      seen.push(...(await readUntil(messages, (s) => notifications(s).length >= 2, "2 live notifications")));
      assert.deepEqual(
        notifications(seen).map((n) => n.id),
        ids,
      );
      assert.ok(subscription.reconnects >= 1);
      assert.equal(subscription.lastError?.code, Code.Unavailable);
      assert.ok(seen.some((m) => m.kind === "subscribed" && m.resumed));
      subscription.close();
    } finally {
      viaProxy.close();
      await proxy.close();
    }
  });
});

describe("connecting", () => {
  it("streams from a delivery process's own HTTP/2 server, live and replayed in batches", TEST, async () => {
    const streams = new DualstreamClient({ target: stackEnv("DUALSTREAM_TEST_STREAMS_TARGET"), timeoutMs: PATIENCE_MS });
    try {
      const sourceId = unique("h2");
      const live = streams.subscribe({ sources: [["user", sourceId]] });
      const liveMessages = iterate(live);
      await readUntil(liveMessages, (s) => s.length === 1, "subscribed");
      const ids: string[] = [];
      for (let n = 0; n < 3; n++) {
        ids.push((await client.publish({ type: "t.h2", sourceType: "user", sourceId })).id);
      }
      const seen = notifications(await readUntil(liveMessages, (s) => notifications(s).length >= 3, "3 notifications"));
      assert.deepEqual(
        seen.map((n) => [n.id, n.replayed]),
        ids.map((id) => [id, false]),
      );
      live.close();
      const resumed = streams.subscribe({
        sources: [["user", sourceId]],
        resumeCursor: seen[0]?.cursor,
        maxNotificationsPerMessage: 16,
      });
      const replay = notifications(
        await readUntil(iterate(resumed), (s) => s.some((m) => m.kind === "caughtUp"), "caught_up"),
      );
      assert.deepEqual(
        replay.map((n) => [n.id, n.replayed]),
        ids.slice(1).map((id) => [id, true]),
      );
      resumed.close();
    } finally {
      streams.close();
    }
  });

  it("reaches a sidecar on a unix socket", TEST, async () => {
    const target = stackEnv("DUALSTREAM_TEST_UNIX_TARGET");
    assert.match(target, /^unix:\//);
    const overSocket = new DualstreamClient({ target, timeoutMs: PATIENCE_MS });
    try {
      const sourceId = unique("unix");
      const subscription = overSocket.subscribe({ sources: [["user", sourceId]] });
      const messages = iterate(subscription);
      await readUntil(messages, (s) => s.length === 1, "subscribed");
      const { id } = await overSocket.publish({ type: "t.unix", sourceType: "user", sourceId });
      const [seen] = notifications(await readUntil(messages, (s) => notifications(s).length >= 1, "a notification"));
      assert.equal(seen?.id, id);
      subscription.close();
    } finally {
      overSocket.close();
    }
  });

  it("runs the README's quickstart as written, against the stack's sidecar", TEST, async () => {
    // The quickstart targets `make up`'s 127.0.0.1:50051; here the stack's port stands in.
    const here = fileURLToPath(new URL(".", import.meta.url));
    const source = await readFile(`${here}../../../examples/quickstart.mjs`, "utf8");
    assert.ok(source.includes("127.0.0.1:50051"));
    const readme = await readFile(`${here}../../../../../README.md`, "utf8");
    assert.ok(readme.includes(source), "the README's TypeScript quickstart is examples/quickstart.mjs, verbatim");
    // Inside the package directory, so that `@dualstream/client` resolves to this package.
    const script = `${here}../../quickstart-under-test.mjs`;
    await writeFile(script, source.replace("127.0.0.1:50051", stackEnv("DUALSTREAM_TEST_TARGET")));
    const { stdout } = await promisify(execFile)(process.execPath, [script], { timeout: PATIENCE_MS });
    const [published, notified] = stdout.trim().split("\n");
    const publishedId = published?.split(" ")[1];
    assert.match(published ?? "", /^published \S+ to events \d+ \d+$/);
    assert.equal(notified?.split(" ")[1], publishedId, stdout);
  });
});
