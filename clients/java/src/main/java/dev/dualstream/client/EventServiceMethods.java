package dev.dualstream.client;

import com.google.protobuf.Message;
import dev.dualstream.v1.GetStatusRequest;
import dev.dualstream.v1.GetStatusResponse;
import dev.dualstream.v1.PublishBatchRequest;
import dev.dualstream.v1.PublishBatchResponse;
import dev.dualstream.v1.PublishRequest;
import dev.dualstream.v1.PublishResponse;
import dev.dualstream.v1.SubscribeRequest;
import dev.dualstream.v1.SubscribeResponse;
import io.grpc.MethodDescriptor;
import io.grpc.MethodDescriptor.MethodType;
import io.grpc.protobuf.ProtoUtils;

/**
 * The methods of {@code dualstream.v1.EventService}, described by hand with grpc-java's public API:
 * this is what protoc-gen-grpc-java would generate, and all of it the client needs.
 */
final class EventServiceMethods {
  static final String SERVICE_NAME = "dualstream.v1.EventService";

  static final MethodDescriptor<PublishRequest, PublishResponse> PUBLISH =
      method(
          MethodType.UNARY,
          "Publish",
          PublishRequest.getDefaultInstance(),
          PublishResponse.getDefaultInstance());

  static final MethodDescriptor<PublishBatchRequest, PublishBatchResponse> PUBLISH_BATCH =
      method(
          MethodType.UNARY,
          "PublishBatch",
          PublishBatchRequest.getDefaultInstance(),
          PublishBatchResponse.getDefaultInstance());

  static final MethodDescriptor<SubscribeRequest, SubscribeResponse> SUBSCRIBE =
      method(
          MethodType.SERVER_STREAMING,
          "Subscribe",
          SubscribeRequest.getDefaultInstance(),
          SubscribeResponse.getDefaultInstance());

  static final MethodDescriptor<GetStatusRequest, GetStatusResponse> GET_STATUS =
      method(
          MethodType.UNARY,
          "GetStatus",
          GetStatusRequest.getDefaultInstance(),
          GetStatusResponse.getDefaultInstance());

  private EventServiceMethods() {}

  private static <RequestT extends Message, ResponseT extends Message>
      MethodDescriptor<RequestT, ResponseT> method(
          MethodType type, String name, RequestT request, ResponseT response) {
    return MethodDescriptor.<RequestT, ResponseT>newBuilder()
        .setType(type)
        .setFullMethodName(MethodDescriptor.generateFullMethodName(SERVICE_NAME, name))
        .setRequestMarshaller(ProtoUtils.marshaller(request))
        .setResponseMarshaller(ProtoUtils.marshaller(response))
        // Publish is not idempotent on the wire (a retry is made safe by reusing the event id,
        // which the client does itself), so nothing here tells gRPC it may retry on its own.
        .setSampledToLocalTracing(true)
        .build();
  }
}
