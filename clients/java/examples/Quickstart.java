import dev.dualstream.client.*;

public class Quickstart {
  public static void main(String[] args) {
    var request = SubscriptionRequest.builder().source("user", "octocat").build();
    try (var client = DualstreamClient.builder("127.0.0.1:50051").build();
        var subscription = client.subscribe(request)) { // live now: publish, watch it arrive
      var event =
          EventInput.builder("user.starred", "user", "octocat").json("{\"repo\":1}").build();
      var result = client.publish(event);
      System.out.printf(
          "published %s at %d:%d%n", result.id(), result.partition(), result.offset());
      if (subscription.next() instanceof Notification n) {
        System.out.printf(
            "notified %s at %d:%d %s%n", n.id(), n.partition(), n.offset(), n.traceparent());
      }
    }
  }
}
