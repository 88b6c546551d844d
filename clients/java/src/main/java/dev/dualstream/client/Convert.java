package dev.dualstream.client;

import com.google.protobuf.ByteString;
import com.google.protobuf.Timestamp;
import dev.dualstream.v1.Event;
import dev.dualstream.v1.PublishBatchResult;
import dev.dualstream.v1.PublishResponse;
import dev.dualstream.v1.SubscribeRequest;
import dev.dualstream.v1.SubscribeResponse;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;

/** Between the client's types and the generated protobuf messages. */
final class Convert {
  private Convert() {}

  static Event event(EventInput input) {
    Event.Builder event =
        Event.newBuilder()
            .setId(input.id())
            .setType(input.type())
            .setSourceType(input.sourceType())
            .setSourceId(input.sourceId())
            .setData(ByteString.copyFrom(input.data()))
            .setContentType(input.contentType())
            .putAllAttributes(input.attributes());
    input.time().ifPresent(time -> event.setTime(timestamp(time)));
    return event.build();
  }

  static EventInput eventInput(Event event) {
    EventInput.Builder input =
        EventInput.builder(event.getType(), event.getSourceType(), event.getSourceId())
            .id(event.getId())
            .data(event.getData().toByteArray())
            .contentType(event.getContentType())
            .attributes(event.getAttributesMap());
    if (event.hasTime()) {
      input.time(instant(event.getTime()));
    }
    return input.build();
  }

  static PublishResult publishResult(PublishResponse response) {
    return new PublishResult(
        response.getId(),
        response.getTopic(),
        response.getPartition(),
        response.getOffset(),
        response.getNotified());
  }

  static BatchItemResult batchItemResult(PublishBatchResult result) {
    if (result.hasPublished()) {
      return BatchItemResult.success(publishResult(result.getPublished()));
    }
    return BatchItemResult.failure(
        result.getId(),
        Errors.forCodeNumber(result.getError().getCode(), result.getError().getMessage()));
  }

  /** The request to send; {@code resumeCursor}, when not empty, replaces any start position. */
  static SubscribeRequest subscribeRequest(SubscriptionRequest request, String resumeCursor) {
    SubscribeRequest.Builder proto =
        SubscribeRequest.newBuilder()
            .addAllTypes(request.types())
            .setSlowConsumerPolicy(policy(request.policy()))
            .setIncludeData(request.includeData())
            .setMaxNotificationsPerMessage(request.maxNotificationsPerMessage());
    for (SubscriptionRequest.Source source : request.sources()) {
      proto.addSources(
          dev.dualstream.v1.Source.newBuilder()
              .setSourceType(source.sourceType())
              .setSourceId(source.sourceId()));
    }
    if (!resumeCursor.isEmpty()) {
      proto.setResumeCursor(resumeCursor);
    } else if (request.startEarliest()) {
      proto.getStartBuilder().setEarliest(true);
    } else {
      request.startTime().ifPresent(time -> proto.getStartBuilder().setTime(timestamp(time)));
    }
    return proto.build();
  }

  /**
   * The messages the application sees for one stream message, in stream order: none for {@code
   * subscribed} (the stream handles it), several for a notification batch.
   */
  static List<StreamMessage> streamMessages(SubscribeResponse response) {
    switch (response.getMessageCase()) {
      case NOTIFICATION:
        return List.of(notification(response.getNotification()));
      case NOTIFICATIONS:
        List<StreamMessage> unpacked =
            new ArrayList<>(response.getNotifications().getNotificationsCount());
        for (dev.dualstream.v1.Notification item :
            response.getNotifications().getNotificationsList()) {
          unpacked.add(notification(item));
        }
        return unpacked;
      case GAP:
        dev.dualstream.v1.Gap gap = response.getGap();
        return List.of(
            new Gap(
                gapReason(gap.getReason()),
                gap.getMissed(),
                gap.getCursor(),
                instant(gap.getSince()),
                instant(gap.getUntil())));
      case CAUGHT_UP:
        return List.of(
            new CaughtUp(response.getCaughtUp().getReplayed(), response.getCaughtUp().getCursor()));
      default:
        // `subscribed`, or a message kind newer than this client: nothing to deliver.
        return List.of();
    }
  }

  static Notification notification(dev.dualstream.v1.Notification n) {
    return new Notification(
        n.getId(),
        n.getType(),
        n.getSourceType(),
        n.getSourceId(),
        n.getTopic(),
        n.getPartition(),
        n.getOffset(),
        n.getCursor(),
        n.getReplayed(),
        n.getTraceparent(),
        n.getTracestate(),
        n.hasEvent() ? Optional.of(eventInput(n.getEvent())) : Optional.empty());
  }

  static GapReason gapReason(dev.dualstream.v1.GapReason reason) {
    return switch (reason) {
      case GAP_REASON_SLOW_CONSUMER -> GapReason.SLOW_CONSUMER;
      case GAP_REASON_REDIS_OUTAGE -> GapReason.REDIS_OUTAGE;
      case GAP_REASON_NOT_NOTIFIED -> GapReason.NOT_NOTIFIED;
      case GAP_REASON_EXPIRED -> GapReason.EXPIRED;
      default -> GapReason.UNKNOWN;
    };
  }

  static dev.dualstream.v1.SlowConsumerPolicy policy(SlowConsumerPolicy policy) {
    return switch (policy) {
      case GAP -> dev.dualstream.v1.SlowConsumerPolicy.SLOW_CONSUMER_POLICY_GAP;
      case REPLAY -> dev.dualstream.v1.SlowConsumerPolicy.SLOW_CONSUMER_POLICY_REPLAY;
      case CLOSE -> dev.dualstream.v1.SlowConsumerPolicy.SLOW_CONSUMER_POLICY_CLOSE;
    };
  }

  static Timestamp timestamp(Instant instant) {
    return Timestamp.newBuilder()
        .setSeconds(instant.getEpochSecond())
        .setNanos(instant.getNano())
        .build();
  }

  static Instant instant(Timestamp timestamp) {
    return Instant.ofEpochSecond(timestamp.getSeconds(), timestamp.getNanos());
  }
}
