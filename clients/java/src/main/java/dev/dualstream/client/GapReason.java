package dev.dualstream.client;

/** Why a stream missed notifications. */
public enum GapReason {
  /** The client read too slowly and the stream's buffer in the sidecar overflowed. */
  SLOW_CONSUMER,
  /** The sidecar lost its Redis connection; notifications sent meanwhile were not received. */
  REDIS_OUTAGE,
  /** A publishing sidecar could not send some notifications, and said so once Redis was back. */
  NOT_NOTIFIED,
  /** Kafka's retention deleted events before the stream could replay them: they are lost. */
  EXPIRED,
  /** A reason this version of the client does not know. */
  UNKNOWN
}
