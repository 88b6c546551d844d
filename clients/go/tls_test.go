package dualstream_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	dualstream "github.com/dualstream/dualstream/clients/go"
	pb "github.com/dualstream/dualstream/clients/go/gen/dualstream/v1"
)

// selfSigned makes a certificate for 127.0.0.1 and the pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sidecar"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(parsed)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// tokenEcho answers Publish with the authorization metadata it received as the event id.
type tokenEcho struct {
	pb.UnimplementedEventServiceServer
}

func (tokenEcho) Publish(ctx context.Context, _ *pb.PublishRequest) (*pb.PublishResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if len(md.Get("authorization")) != 1 {
		return nil, status.Error(codes.Unauthenticated, "no token")
	}
	return &pb.PublishResponse{Id: md.Get("authorization")[0]}, nil
}

// The sidecar's own TLS is tested by the Python suite; this checks the client's side of it:
// WithTLS verifies the server against the given roots, and the token travels over it.
func TestTLSWithToken(t *testing.T) {
	certificate, roots := selfSigned(t)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer(grpc.Creds(credentials.NewServerTLSFromCert(&certificate)))
	pb.RegisterEventServiceServer(server, tokenEcho{})
	go func() { _ = server.Serve(listener) }()
	defer server.Stop()
	target := listener.Addr().String()
	ctx := testContext(t)
	event := dualstream.Event{Type: "t", SourceType: "s", SourceID: "a"}

	client, err := dualstream.New(target, dualstream.WithTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}), dualstream.WithToken("secret"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	result, err := client.Publish(ctx, event)
	if err != nil || result.ID != "Bearer secret" {
		t.Fatalf("over TLS with a token: %+v, %v", result, err)
	}

	untrusted, err := dualstream.New(target, dualstream.WithTLS(nil), dualstream.WithRetry(dualstream.NoRetry))
	if err != nil {
		t.Fatal(err)
	}
	defer untrusted.Close()
	if _, err := untrusted.Publish(ctx, event); status.Code(err) != codes.Unavailable {
		t.Errorf("a certificate the client does not trust must fail the handshake, got %v", err)
	}
}
