export {
  type BatchItemResult,
  type CallOptions,
  type ClientOptions,
  DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE,
  DualstreamClient,
  type SlowConsumerPolicyName,
  type SubscribeOptions,
  Subscription,
} from "./client.js";
export { Code, DualstreamError, codeName } from "./errors.js";
export type {
  CaughtUp,
  EventInput,
  EventRecord,
  Gap,
  GapReasonName,
  Notification,
  PublishResult,
  StreamMessage,
  Subscribed,
} from "./messages.js";
export type { BackoffOptions } from "./backoff.js";
export type { ReconnectOptions } from "./resume.js";
export type { RetryOptions } from "./retry.js";
export type { ThrottleOptions } from "./throttle.js";
export type { TlsOptions } from "./transport.js";
export { uuidv7 } from "./uuid7.js";
