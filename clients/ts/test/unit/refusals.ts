import { toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { DurationSchema, durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";

/**
 * A refusal as the sidecar words it past capacity: RESOURCE_EXHAUSTED with a
 * `google.rpc.RetryInfo` detail and/or the `grpc-retry-pushback-ms` trailer.
 */
export function capacityRefusal(hint: { retryInfoMs?: number; pushback?: string }): ConnectError {
  const error = new ConnectError(
    "past capacity",
    Code.ResourceExhausted,
    hint.pushback === undefined ? undefined : { "grpc-retry-pushback-ms": hint.pushback },
  );
  if (hint.retryInfoMs !== undefined) {
    const delay = toBinary(DurationSchema, durationFromMs(hint.retryInfoMs));
    const retryInfo = new BinaryWriter().tag(1, WireType.LengthDelimited).bytes(delay).finish();
    error.details.push({ type: "google.rpc.RetryInfo", value: retryInfo });
  }
  return error;
}
