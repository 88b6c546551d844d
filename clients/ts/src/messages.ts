import { create } from "@bufbuild/protobuf";
import { type Timestamp, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type Event as EventMessage,
  EventSchema,
  GapReason,
  type Notification as NotificationMessage,
  type PublishResponse,
  type SubscribeResponse,
} from "./gen/dualstream/v1/event_service_pb.js";

/** An event to publish. Leave `id` empty and the client assigns a UUIDv7 before sending it. */
export interface EventInput {
  /** The kind of event, for example `order.created`. */
  type: string;
  /** The kind of entity the event is about, for example `user`; no `:`. */
  sourceType: string;
  /** The entity, for example `octocat`; the Kafka key, so one source's events stay in order. */
  sourceId: string;
  /** The payload, written to Kafka unchanged; a string is sent as UTF-8. */
  data?: Uint8Array | string;
  /** The media type of `data`, for example `application/json`. */
  contentType?: string;
  id?: string;
  /** When the event happened; unset means when the sidecar received it. */
  time?: Date;
  /** Extension attributes (`ce_<name>` Kafka headers): names of 1 to 20 of `[a-z0-9]`. */
  attributes?: Record<string, string>;
}

/** Where Kafka stored an event, and whether live subscribers were told. */
export interface PublishResult {
  id: string;
  topic: string;
  partition: number;
  /**
   * The Kafka offset. int64 in the API, a `number` here: exact up to 2^53, which no partition
   * reaches, and it keeps results JSON-serialisable.
   */
  offset: number;
  /** False when the Redis notification did not go out; the event is durable all the same. */
  notified: boolean;
}

/** An event as read back from Kafka, in a notification that asked for `includeData`. */
export interface EventRecord {
  id: string;
  type: string;
  sourceType: string;
  sourceId: string;
  data: Uint8Array;
  contentType: string;
  time: Date | undefined;
  attributes: Record<string, string>;
}

/** The first message of every connection of a subscription: live delivery has started. */
export interface Subscribed {
  kind: "subscribed";
  channels: string[];
  cursor: string;
  /** True when the client reconnected after the stream broke and resumed from its cursor. */
  resumed: boolean;
}

/** An event was published to a followed source. */
export interface Notification {
  kind: "notification";
  id: string;
  type: string;
  sourceType: string;
  sourceId: string;
  topic: string;
  partition: number;
  /** The Kafka offset (a `number`, exact up to 2^53). */
  offset: number;
  /** Resume after this notification with this cursor. */
  cursor: string;
  /** True when replayed from Kafka (a resume or a replay policy) rather than received live. */
  replayed: boolean;
  /** W3C trace context to continue the event's trace from; empty when it was not traced. */
  traceparent: string;
  tracestate: string;
  /** The whole event, when the subscription asked for `includeData`. */
  event: EventRecord | undefined;
}

export type GapReasonName = "slow_consumer" | "redis_outage" | "not_notified" | "expired" | "unspecified";

/** Notifications were missed and not replayed; resume from `cursor` to get them. */
export interface Gap {
  kind: "gap";
  reason: GapReasonName;
  /** How many were missed when the sidecar knows; 0 when it does not (a Redis outage). */
  missed: number;
  cursor: string;
  since: Date | undefined;
  until: Date | undefined;
}

/** A replay from Kafka reached the live stream; what follows is live. */
export interface CaughtUp {
  kind: "caughtUp";
  replayed: number;
  cursor: string;
}

export type StreamMessage = Subscribed | Notification | Gap | CaughtUp;

const encoder = new TextEncoder();

export function eventToProto(event: EventInput, id: string): EventMessage {
  const data = event.data ?? new Uint8Array();
  return create(EventSchema, {
    id,
    type: event.type,
    sourceType: event.sourceType,
    sourceId: event.sourceId,
    data: typeof data === "string" ? encoder.encode(data) : data,
    contentType: event.contentType ?? "",
    time: event.time === undefined ? undefined : timestampFromDate(event.time),
    attributes: { ...event.attributes },
  });
}

export function publishResultFromProto(response: PublishResponse): PublishResult {
  return {
    id: response.id,
    topic: response.topic,
    partition: response.partition,
    offset: Number(response.offset),
    notified: response.notified,
  };
}

function dateOrUndefined(timestamp: Timestamp | undefined): Date | undefined {
  return timestamp === undefined ? undefined : timestampDate(timestamp);
}

function notificationFromProto(n: NotificationMessage): Notification {
  const e = n.event;
  return {
    kind: "notification",
    id: n.id,
    type: n.type,
    sourceType: n.sourceType,
    sourceId: n.sourceId,
    topic: n.topic,
    partition: n.partition,
    offset: Number(n.offset),
    cursor: n.cursor,
    replayed: n.replayed,
    traceparent: n.traceparent,
    tracestate: n.tracestate,
    event:
      e === undefined
        ? undefined
        : {
            id: e.id,
            type: e.type,
            sourceType: e.sourceType,
            sourceId: e.sourceId,
            data: e.data,
            contentType: e.contentType,
            time: dateOrUndefined(e.time),
            attributes: { ...e.attributes },
          },
  };
}

const GAP_REASONS: Record<GapReason, GapReasonName> = {
  [GapReason.UNSPECIFIED]: "unspecified",
  [GapReason.SLOW_CONSUMER]: "slow_consumer",
  [GapReason.REDIS_OUTAGE]: "redis_outage",
  [GapReason.NOT_NOTIFIED]: "not_notified",
  [GapReason.EXPIRED]: "expired",
};

/**
 * What the application sees of one stream message: none (a kind newer than this client), one,
 * or, for a `NotificationBatch`, each of its notifications in order. `resumed` marks a
 * `subscribed` that follows an automatic reconnection.
 */
export function streamMessagesFromProto(response: SubscribeResponse, resumed: boolean): StreamMessage[] {
  const message = response.message;
  switch (message.case) {
    case "subscribed":
      return [{ kind: "subscribed", channels: [...message.value.channels], cursor: message.value.cursor, resumed }];
    case "notification":
      return [notificationFromProto(message.value)];
    case "notifications":
      return message.value.notifications.map(notificationFromProto);
    case "gap":
      return [
        {
          kind: "gap",
          reason: GAP_REASONS[message.value.reason] ?? "unspecified",
          missed: Number(message.value.missed),
          cursor: message.value.cursor,
          since: dateOrUndefined(message.value.since),
          until: dateOrUndefined(message.value.until),
        },
      ];
    case "caughtUp":
      return [{ kind: "caughtUp", replayed: Number(message.value.replayed), cursor: message.value.cursor }];
    default:
      return [];
  }
}
