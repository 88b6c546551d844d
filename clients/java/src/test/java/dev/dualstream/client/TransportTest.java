package dev.dualstream.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import io.grpc.Grpc;
import io.grpc.TlsServerCredentials;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.netty.shaded.io.netty.channel.ChannelOption;
import io.grpc.netty.shaded.io.netty.channel.EventLoopGroup;
import io.grpc.netty.shaded.io.netty.channel.epoll.EpollEventLoopGroup;
import io.grpc.netty.shaded.io.netty.channel.epoll.EpollServerDomainSocketChannel;
import io.grpc.netty.shaded.io.netty.channel.unix.DomainSocketAddress;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.util.List;
import java.util.concurrent.TimeUnit;
import javax.net.ssl.KeyManagerFactory;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The targets and credentials the builder offers, over real sockets. */
class TransportTest {
  @TempDir Path directory;

  @Test
  void aUnixSocketTargetWorks() throws Exception {
    Path socket = directory.resolve("sidecar.sock");
    EventLoopGroup group = new EpollEventLoopGroup(1);
    NettyServerBuilder server =
        NettyServerBuilder.forAddress(new DomainSocketAddress(socket.toString()))
            .channelType(EpollServerDomainSocketChannel.class)
            .bossEventLoopGroup(group)
            .workerEventLoopGroup(group)
            .withChildOption(ChannelOption.SO_KEEPALIVE, null); // No TCP on a unix socket.
    try (FakeSidecar sidecar = new FakeSidecar(server);
        DualstreamClient client = DualstreamClient.builder("unix:" + socket).build()) {
      sidecar.publish = (request, response) -> CallLayerTest.respond(response, request);
      PublishResult result =
          client.publish(EventInput.builder("t", "user", "a").id("over-uds").build());
      assertEquals("over-uds", result.id());
    } finally {
      group.shutdownGracefully(0, 5, TimeUnit.SECONDS).await(30, TimeUnit.SECONDS);
    }
  }

  @Test
  void tlsWithTheServersRootWorksAndWithoutItFails() throws Exception {
    Path keystore = directory.resolve("server.p12");
    Path certificate = directory.resolve("server.pem");
    keytool(
        "-genkeypair",
        "-alias",
        "sidecar",
        "-keyalg",
        "EC",
        "-groupname",
        "secp256r1",
        "-dname",
        "CN=localhost",
        "-ext",
        "san=dns:localhost,ip:127.0.0.1",
        "-validity",
        "2",
        "-storetype",
        "PKCS12",
        "-keystore",
        keystore.toString(),
        "-storepass",
        "changeit");
    keytool(
        "-exportcert",
        "-rfc",
        "-alias",
        "sidecar",
        "-keystore",
        keystore.toString(),
        "-storepass",
        "changeit",
        "-file",
        certificate.toString());
    KeyStore store = KeyStore.getInstance("PKCS12");
    try (InputStream in = Files.newInputStream(keystore)) {
      store.load(in, "changeit".toCharArray());
    }
    KeyManagerFactory keys = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
    keys.init(store, "changeit".toCharArray());
    TlsServerCredentials credentials =
        (TlsServerCredentials)
            TlsServerCredentials.newBuilder().keyManager(keys.getKeyManagers()).build();

    try (FakeSidecar sidecar = new FakeSidecar(Grpc.newServerBuilderForPort(0, credentials))) {
      sidecar.publish = (request, response) -> CallLayerTest.respond(response, request);
      try (DualstreamClient trusting =
          DualstreamClient.builder(sidecar.target()).tlsTrustRoots(certificate).build()) {
        assertEquals(
            "tls", trusting.publish(EventInput.builder("t", "u", "a").id("tls").build()).id());
      }
      try (DualstreamClient byName =
          DualstreamClient.builder(sidecar.target())
              .tlsTrustRoots(Files.readAllBytes(certificate))
              .authority("localhost")
              .build()) {
        assertEquals("n", byName.publish(EventInput.builder("t", "u", "a").id("n").build()).id());
      }
      try (DualstreamClient systemRoots =
          DualstreamClient.builder(sidecar.target()).tls().retryPolicy(RetryPolicy.NONE).build()) {
        assertThrows(
            UnavailableException.class,
            () -> systemRoots.publish(EventInput.of("t", "u", "a", new byte[0])));
      }
      try (DualstreamClient plaintext =
          DualstreamClient.builder(sidecar.target()).retryPolicy(RetryPolicy.NONE).build()) {
        assertThrows(
            UnavailableException.class,
            () -> plaintext.publish(EventInput.of("t", "u", "a", new byte[0])));
      }
    }
  }

  private static void keytool(String... arguments) throws Exception {
    Path keytool = Path.of(System.getProperty("java.home"), "bin", "keytool");
    List<String> command = new java.util.ArrayList<>(List.of(keytool.toString()));
    command.addAll(List.of(arguments));
    Process process = new ProcessBuilder(command).redirectErrorStream(true).start();
    String output = new String(process.getInputStream().readAllBytes());
    if (!process.waitFor(60, TimeUnit.SECONDS) || process.exitValue() != 0) {
      throw new AssertionError("keytool failed: " + output);
    }
  }
}
