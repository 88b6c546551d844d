import { randomBytes } from "node:crypto";
import * as net from "node:net";
import type { StreamMessage, Subscription } from "../../src/index.js";

/** The stack `python -m stack.localstack with-stack` started; missing means a wrong setup. */
export function stackEnv(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(
      `${name} is not set: run the integration tests under the stack, ` +
        "`python -m stack.localstack with-stack -- npm run test:integration` (make test does)",
    );
  }
  return value;
}

/** A source id no other test or run shares. */
export function unique(prefix: string): string {
  return `${prefix}-${randomBytes(6).toString("hex")}`;
}

// Waits are on conditions, with deadlines generous enough for a loaded 2-core machine.
export const PATIENCE_MS = 60_000;

/** Pull from `subscription` until `done` says so; fail after `PATIENCE_MS`. */
export async function readUntil(
  messages: AsyncIterator<StreamMessage>,
  done: (seen: StreamMessage[]) => boolean,
  what: string,
): Promise<StreamMessage[]> {
  const seen: StreamMessage[] = [];
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`no ${what} within ${PATIENCE_MS} ms; saw ${JSON.stringify(seen)}`)),
      PATIENCE_MS,
    );
  });
  try {
    while (!done(seen)) {
      const next = await Promise.race([messages.next(), timeout]);
      if (next.done) {
        throw new Error(`the subscription ended before ${what}; saw ${JSON.stringify(seen)}`);
      }
      seen.push(next.value);
    }
    return seen;
  } finally {
    clearTimeout(timer);
  }
}

export function iterate(subscription: Subscription): AsyncIterator<StreamMessage> {
  return subscription[Symbol.asyncIterator]();
}

export const notifications = (messages: StreamMessage[]) => messages.filter((m) => m.kind === "notification");

/**
 * A TCP relay in front of the sidecar that the test can cut: every open connection is
 * destroyed at once, as when a network path fails. New connections go through again.
 */
export class CuttableProxy {
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();
  connections = 0;

  private constructor(server: net.Server) {
    this.#server = server;
  }

  static async start(target: string): Promise<CuttableProxy> {
    const colon = target.lastIndexOf(":");
    const host = target.slice(0, colon);
    const port = Number(target.slice(colon + 1));
    let proxy: CuttableProxy | undefined;
    const server = net.createServer((client) => {
      const upstream = net.connect(port, host);
      proxy?.track(client, upstream);
    });
    proxy = new CuttableProxy(server);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return proxy;
  }

  get target(): string {
    const address = this.#server.address() as net.AddressInfo;
    return `127.0.0.1:${address.port}`;
  }

  private track(client: net.Socket, upstream: net.Socket): void {
    this.connections += 1;
    for (const socket of [client, upstream]) {
      this.#sockets.add(socket);
      socket.on("close", () => this.#sockets.delete(socket));
      socket.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Destroy every connection through the relay. */
  cut(): void {
    for (const socket of this.#sockets) {
      socket.destroy();
    }
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
