package dev.dualstream.client;

import io.grpc.CallCredentials;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.Deadline;
import io.grpc.MethodDescriptor;
import io.grpc.stub.ClientCalls;
import io.grpc.stub.ClientResponseObserver;
import io.grpc.stub.StreamObserver;
import java.util.concurrent.CompletableFuture;

/**
 * The call layer: starts unary and server-streaming calls on a channel with grpc-java's {@link
 * ClientCalls}, adding the client's credentials and the call's deadline. Unary failures come back
 * already translated into {@link DualstreamException}s.
 */
final class RpcCaller {
  private final Channel channel;
  private final CallOptions baseOptions;

  RpcCaller(Channel channel, CallCredentials credentials) {
    this.channel = channel;
    this.baseOptions =
        credentials == null
            ? CallOptions.DEFAULT
            : CallOptions.DEFAULT.withCallCredentials(credentials);
  }

  /**
   * Starts a unary call. Cancelling the returned future cancels the call; a failure completes it
   * exceptionally with a {@link DualstreamException}.
   */
  <RequestT, ResponseT> CompletableFuture<ResponseT> unary(
      MethodDescriptor<RequestT, ResponseT> method, RequestT request, Deadline deadline) {
    ClientCall<RequestT, ResponseT> call = channel.newCall(method, options(deadline));
    CompletableFuture<ResponseT> result = new CompletableFuture<>();
    result.whenComplete(
        (response, failure) -> {
          if (result.isCancelled()) {
            call.cancel("cancelled by the caller", null);
          }
        });
    ClientCalls.asyncUnaryCall(
        call,
        request,
        new StreamObserver<>() {
          private ResponseT response;

          @Override
          public void onNext(ResponseT value) {
            // Not the outcome yet: the status decides. A server may send a message and then a
            // failure (the sidecar refusing a publish for capacity does), and that call failed.
            response = value;
          }

          @Override
          public void onError(Throwable failure) {
            result.completeExceptionally(Errors.translate(failure));
          }

          @Override
          public void onCompleted() {
            // An OK status; a unary call without a response is an error that gRPC reports
            // through onError.
            result.complete(response);
          }
        });
    return result;
  }

  /**
   * Starts a server-streaming call. The observer's {@code beforeStart} receives the call's stream
   * observer, through which it controls flow ({@code disableAutoRequestWithInitial}, {@code
   * request}) and cancels; failures reach {@code onError} as gRPC raised them.
   */
  <RequestT, ResponseT> void serverStreaming(
      MethodDescriptor<RequestT, ResponseT> method,
      RequestT request,
      ClientResponseObserver<RequestT, ResponseT> observer) {
    ClientCall<RequestT, ResponseT> call = channel.newCall(method, baseOptions);
    ClientCalls.asyncServerStreamingCall(call, request, observer);
  }

  private CallOptions options(Deadline deadline) {
    return deadline == null ? baseOptions : baseOptions.withDeadline(deadline);
  }
}
