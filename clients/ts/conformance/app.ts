// The TypeScript conformance app: the same command line in every language, driven by
// tests/clients/ (the resume property and the cross-language test). One JSON line per
// acknowledged event or stream message, written synchronously so each line is out at once.
import { writeSync } from "node:fs";
import { parseArgs } from "node:util";
import { type ClientOptions, DualstreamClient, DualstreamError, type SlowConsumerPolicyName } from "../src/index.js";

const USAGE = `usage:
  app publish --target T [--token X] --source TYPE:ID --type TYPE --count N [--id-prefix P]
  app subscribe --target T [--token X] --source TYPE:ID... [--resume CURSOR] [--limit N]
                [--policy gap|replay|close]
  app overload --target T [--token X] --source TYPE:ID --count N --concurrency C`;

function emit(line: Record<string, unknown>): void {
  writeSync(1, `${JSON.stringify(line)}\n`);
}

function source(text: string): [string, string] {
  const colon = text.indexOf(":");
  if (colon <= 0) {
    throw new TypeError(`--source ${JSON.stringify(text)} is not TYPE:ID`);
  }
  return [text.slice(0, colon), text.slice(colon + 1)];
}

function count(text: string | undefined, flag: string): number | undefined {
  if (text === undefined) {
    return undefined;
  }
  if (!/^\d+$/.test(text)) {
    throw new TypeError(`${flag} ${JSON.stringify(text)} is not a whole number`);
  }
  return Number(text);
}

async function publish(client: DualstreamClient, flags: Flags): Promise<void> {
  const [sourceType, sourceId] = source(only(flags.source, "--source"));
  const total = count(flags.count, "--count") ?? 1;
  const type = flags.type ?? "conformance.published";
  for (let i = 0; i < total; i++) {
    const id = flags["id-prefix"] === undefined ? "" : `${flags["id-prefix"]}-${i}`;
    const result = await client.publish({ id, type, sourceType, sourceId });
    emit({
      id: result.id,
      source_type: sourceType,
      source_id: sourceId,
      partition: result.partition,
      offset: result.offset,
    });
  }
}

/**
 * N publishes with C in flight, no retry and the default throttle; one line counts how each
 * ended: acknowledged, refused by the sidecar as past capacity, held back by the throttle, or
 * any other error by its code.
 */
async function overload(client: DualstreamClient, flags: Flags): Promise<void> {
  const [sourceType, sourceId] = source(only(flags.source, "--source"));
  const total = count(flags.count, "--count") ?? 1;
  const concurrency = Math.max(1, count(flags.concurrency, "--concurrency") ?? 1);
  const tally = { kind: "overload", ok: 0, refused: 0, throttled: 0, errors: {} as Record<string, number> };
  let started = 0;
  const worker = async (): Promise<void> => {
    while (started < total) {
      started += 1;
      try {
        await client.publish({ type: "overload", sourceType, sourceId });
        tally.ok += 1;
      } catch (error) {
        if (!(error instanceof DualstreamError)) {
          throw error;
        }
        if (error.throttled) {
          tally.throttled += 1;
        } else if (error.retryAfterMs !== undefined) {
          tally.refused += 1;
        } else {
          tally.errors[error.codeName] = (tally.errors[error.codeName] ?? 0) + 1;
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, total) }, worker));
  emit(tally);
}

async function subscribe(client: DualstreamClient, flags: Flags): Promise<void> {
  const limit = count(flags.limit, "--limit");
  const policy = (flags.policy ?? "gap") as SlowConsumerPolicyName;
  if (!["gap", "replay", "close"].includes(policy)) {
    throw new TypeError(`--policy ${JSON.stringify(policy)} is not gap, replay or close`);
  }
  const subscription = client.subscribe({
    sources: (flags.source ?? []).map(source),
    policy,
    ...(flags.resume === undefined ? {} : { resumeCursor: flags.resume }),
    reconnect: {
      onReconnect: ({ error, attempt, delayMs }) =>
        process.stderr.write(`reconnecting (attempt ${attempt}, in ${Math.round(delayMs)} ms): ${error.message}\n`),
    },
  });
  let notifications = 0;
  if (limit === 0) {
    return;
  }
  // Without --limit the app runs until SIGTERM, and then ends as a success.
  process.once("SIGTERM", () => subscription.close());
  for await (const message of subscription) {
    switch (message.kind) {
      case "subscribed":
        // Only the first: later ones mark a resume, which the app's output does not show.
        if (!message.resumed) {
          emit({ kind: "subscribed", cursor: message.cursor });
        }
        break;
      case "notification":
        emit({
          kind: "notification",
          id: message.id,
          source_type: message.sourceType,
          source_id: message.sourceId,
          partition: message.partition,
          offset: message.offset,
          cursor: message.cursor,
          replayed: message.replayed,
          traceparent: message.traceparent,
        });
        notifications += 1;
        if (limit !== undefined && notifications >= limit) {
          subscription.close();
        }
        break;
      case "gap":
        emit({ kind: "gap", reason: message.reason.toUpperCase(), missed: message.missed, cursor: message.cursor });
        break;
      case "caughtUp":
        emit({ kind: "caught_up", replayed: message.replayed, cursor: message.cursor });
        break;
    }
  }
}

type Flags = {
  target?: string;
  token?: string;
  source?: string[];
  type?: string;
  count?: string;
  "id-prefix"?: string;
  resume?: string;
  limit?: string;
  policy?: string;
  concurrency?: string;
};

function only(values: string[] | undefined, flag: string): string {
  if (values?.length !== 1) {
    throw new TypeError(`${flag} is required once`);
  }
  return values[0] as string;
}

async function main(argv: string[]): Promise<number> {
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      target: { type: "string" },
      token: { type: "string" },
      source: { type: "string", multiple: true },
      type: { type: "string" },
      count: { type: "string" },
      "id-prefix": { type: "string" },
      resume: { type: "string" },
      limit: { type: "string" },
      policy: { type: "string" },
      concurrency: { type: "string" },
    },
  });
  const flags = values as Flags;
  const command = positionals[0];
  const commands = { publish, subscribe, overload };
  if (positionals.length !== 1 || !(command !== undefined && command in commands) || !flags.target) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const retry: ClientOptions["retry"] =
    command === "overload"
      ? // Every answer counted as it came: no retry (the throttle stays at its defaults).
        { maxAttempts: 1 }
      : // The contract: a retry budget of at least 60 s per event (the tests restart the sidecar).
        { maxAttempts: Number.POSITIVE_INFINITY, maxElapsedMs: 90_000 };
  const client = new DualstreamClient({
    target: flags.target,
    retry,
    ...(flags.token === undefined ? {} : { token: flags.token }),
  });
  try {
    await commands[command as keyof typeof commands](client, flags);
  } finally {
    client.close();
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  },
);
