package dev.dualstream.client;

import com.google.protobuf.Any;
import com.google.rpc.RetryInfo;
import dev.dualstream.v1.PublishBatchRequest;
import dev.dualstream.v1.PublishBatchResponse;
import dev.dualstream.v1.PublishRequest;
import dev.dualstream.v1.PublishResponse;
import dev.dualstream.v1.SubscribeRequest;
import dev.dualstream.v1.SubscribeResponse;
import io.grpc.Grpc;
import io.grpc.InsecureServerCredentials;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerBuilder;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.ServerServiceDefinition;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.ServerCalls;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;

/**
 * A scripted EventService on a real loopback port, for the unit tests of the call layer, retries
 * and resume. Handlers default to UNIMPLEMENTED; tests set the ones they need.
 */
final class FakeSidecar implements AutoCloseable {
  interface Unary<Q, R> {
    void handle(Q request, StreamObserver<R> response) throws Exception;
  }

  volatile Unary<PublishRequest, PublishResponse> publish = FakeSidecar::unimplemented;
  volatile Unary<PublishBatchRequest, PublishBatchResponse> publishBatch =
      FakeSidecar::unimplemented;
  volatile Unary<SubscribeRequest, SubscribeResponse> subscribe = FakeSidecar::unimplemented;

  /** The request headers of every call, in arrival order. */
  final List<Metadata> headers = new CopyOnWriteArrayList<>();

  private final Server server;

  /** On a free loopback port, without TLS. */
  FakeSidecar() throws IOException {
    this(Grpc.newServerBuilderForPort(0, InsecureServerCredentials.create()));
  }

  /** On whatever address and credentials {@code builder} has. */
  FakeSidecar(ServerBuilder<?> builder) throws IOException {
    server = builder.addService(service()).build().start();
  }

  /** {@code 127.0.0.1:port}, for a server on a port. */
  String target() {
    return "127.0.0.1:" + server.getPort();
  }

  ServerServiceDefinition service() {
    ServerServiceDefinition definition =
        ServerServiceDefinition.builder(EventServiceMethods.SERVICE_NAME)
            .addMethod(
                EventServiceMethods.PUBLISH,
                ServerCalls.asyncUnaryCall((request, response) -> run(publish, request, response)))
            .addMethod(
                EventServiceMethods.PUBLISH_BATCH,
                ServerCalls.asyncUnaryCall(
                    (request, response) -> run(publishBatch, request, response)))
            .addMethod(
                EventServiceMethods.SUBSCRIBE,
                ServerCalls.asyncServerStreamingCall(
                    (request, response) -> run(subscribe, request, response)))
            .build();
    ServerInterceptor recordHeaders =
        new ServerInterceptor() {
          @Override
          public <Q, R> ServerCall.Listener<Q> interceptCall(
              ServerCall<Q, R> call, Metadata metadata, ServerCallHandler<Q, R> next) {
            headers.add(metadata);
            return next.startCall(call, metadata);
          }
        };
    return ServerInterceptors.intercept(definition, recordHeaders);
  }

  @Override
  public void close() throws InterruptedException {
    server.shutdownNow();
    server.awaitTermination(30, TimeUnit.SECONDS);
  }

  /**
   * What the sidecar answers past its capacity: RESOURCE_EXHAUSTED with the hint as a {@code
   * google.rpc.RetryInfo} detail and as the {@code grpc-retry-pushback-ms} trailer.
   */
  static StatusRuntimeException capacityRefusal(Duration hint) {
    com.google.protobuf.Duration delay =
        com.google.protobuf.Duration.newBuilder()
            .setSeconds(hint.getSeconds())
            .setNanos(hint.getNano())
            .build();
    com.google.rpc.Status rich =
        com.google.rpc.Status.newBuilder()
            .setCode(Status.Code.RESOURCE_EXHAUSTED.value())
            .setMessage("past capacity")
            .addDetails(Any.pack(RetryInfo.newBuilder().setRetryDelay(delay).build()))
            .build();
    return StatusProto.toStatusRuntimeException(rich, pushback(hint.toMillis()));
  }

  /** RESOURCE_EXHAUSTED with only the {@code grpc-retry-pushback-ms} trailer. */
  static StatusRuntimeException pushbackRefusal(long millis) {
    return Status.RESOURCE_EXHAUSTED
        .withDescription("past capacity")
        .asRuntimeException(pushback(millis));
  }

  private static Metadata pushback(long millis) {
    Metadata trailers = new Metadata();
    trailers.put(
        Metadata.Key.of("grpc-retry-pushback-ms", Metadata.ASCII_STRING_MARSHALLER),
        Long.toString(millis));
    return trailers;
  }

  private static <Q, R> void run(Unary<Q, R> handler, Q request, StreamObserver<R> response) {
    try {
      handler.handle(request, response);
    } catch (Exception e) {
      response.onError(Status.INTERNAL.withDescription(e.toString()).asRuntimeException());
    }
  }

  private static <Q, R> void unimplemented(Q request, StreamObserver<R> response) {
    response.onError(Status.UNIMPLEMENTED.asRuntimeException());
  }
}
