import { DualstreamClient } from "@dualstream/client";

const client = new DualstreamClient({ target: "127.0.0.1:50051" });
for await (const message of client.subscribe({ sources: [["user", "octocat"]] })) {
  if (message.kind === "subscribed") { // live from here on: publish, and watch the event arrive
    const event = { type: "user.starred", sourceType: "user", sourceId: "octocat", data: '{"repo":"hello"}' };
    const { id, topic, partition, offset } = await client.publish(event);
    console.log("published", id, "to", topic, partition, offset);
  } else if (message.kind === "notification") {
    console.log("notified", message.id, message.partition, message.offset, message.traceparent);
    break;
  }
}
client.close();
