// TLS with a private CA: a sidecar of this test's own, serving TLS with a certificate that a
// CA made here signed, on the stack's Kafka and Redis.
import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { DualstreamClient, DualstreamError } from "../../src/index.js";
import { PATIENCE_MS, iterate, notifications, readUntil, stackEnv, unique } from "./helpers.js";

const TEST = { timeout: 4 * PATIENCE_MS };
const REPO = fileURLToPath(new URL("../../../../../", import.meta.url));
const run = promisify(execFile);

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function makeCertificates(dir: string): Promise<void> {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await run("openssl", ["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=dualstream test CA"], { cwd: dir });
  await run("openssl", ["req", ...ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"], { cwd: dir });
  await writeFile(join(dir, "san.cnf"), "subjectAltName=IP:127.0.0.1\n");
  await run(
    "openssl",
    ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf"],
    { cwd: dir },
  );
}

describe("TLS", () => {
  let dir: string;
  let sidecar: ChildProcess;
  let target: string;
  let ca: Buffer;
  let client: DualstreamClient;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "dualstream-ts-tls-"));
    await makeCertificates(dir);
    ca = await readFile(join(dir, "ca.pem"));
    target = `127.0.0.1:${await freePort()}`;
    const log = await open(join(dir, "sidecar.log"), "w");
    sidecar = spawn(
      join(REPO, ".venv", "bin", "dualstream"),
      [
        "serve", "--listen", target, "--admin-listen", "",
        "--kafka-bootstrap", stackEnv("DUALSTREAM_TEST_KAFKA"), "--kafka-topic", process.env.DUALSTREAM_TEST_TOPIC ?? "events",
        "--redis-url", stackEnv("DUALSTREAM_TEST_REDIS"),
        "--tls-cert-file", join(dir, "server.pem"), "--tls-key-file", join(dir, "server.key"),
      ], // prettier-ignore
      { stdio: ["ignore", log.fd, log.fd] },
    );
    await log.close();
    client = new DualstreamClient({ target, tls: { ca }, timeoutMs: 5_000, retry: { maxAttempts: 1 } });
    // Ready when a call over TLS goes through.
    const deadline = performance.now() + PATIENCE_MS;
    for (;;) {
      try {
        await client.status();
        break;
      } catch (error) {
        if (sidecar.exitCode !== null || performance.now() > deadline) {
          const output = await readFile(join(dir, "sidecar.log"), "utf8");
          throw new Error(`the TLS sidecar did not answer (${String(error)}); its log:\n${output}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
  });

  after(async () => {
    client?.close();
    if (sidecar && sidecar.exitCode === null && sidecar.signalCode === null) {
      const exited = once(sidecar, "exit");
      sidecar.kill("SIGTERM");
      const timer = setTimeout(() => sidecar.kill("SIGKILL"), PATIENCE_MS);
      await exited;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  });

  it("publishes and subscribes over TLS, trusting the private CA", TEST, async () => {
    const sourceId = unique("tls");
    const subscription = client.subscribe({ sources: [["user", sourceId]] });
    const messages = iterate(subscription);
    await readUntil(messages, (s) => s.length === 1, "subscribed");
    const { id } = await client.publish({ type: "t.tls", sourceType: "user", sourceId });
    const [seen] = notifications(await readUntil(messages, (s) => notifications(s).length >= 1, "a notification"));
    assert.equal(seen?.id, id);
    subscription.close();
  });

  it("fails without the CA, and in plaintext", TEST, async () => {
    const event = { type: "t.tls", sourceType: "user", sourceId: unique("tls-refused") };
    for (const options of [{ tls: true }, {}]) {
      const other = new DualstreamClient({ target, ...options, timeoutMs: PATIENCE_MS, retry: { maxAttempts: 1 } });
      try {
        await assert.rejects(other.publish(event), (error: unknown) => error instanceof DualstreamError);
      } finally {
        other.close();
      }
    }
  });
});
