// Package dualstream is the Go client of the dualstream sidecar: Publish and PublishBatch
// write events durably to Kafka through the sidecar, and Subscribe streams their
// notifications, resuming by itself from its last cursor when the stream breaks.
//
//	client, err := dualstream.New("127.0.0.1:50051")
//	if err != nil { ... }
//	defer client.Close()
//	result, err := client.Publish(ctx, dualstream.Event{Type: "user.starred", SourceType: "user", SourceID: "octocat"})
//
// Targets are "host:port" or "unix:/path/to.sock". Errors are *Error, carrying the gRPC code
// and, for INVALID_ARGUMENT, the path of the offending field (errors.As, status.Code).
package dualstream

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/dualstream/dualstream/clients/go/gen/dualstream/v1"
)

// DefaultTimeout is the deadline each unary call attempt gets when its context has none
// sooner.
const DefaultTimeout = 30 * time.Second

// Client calls one sidecar. It is safe for concurrent use; Close releases its connection.
type Client struct {
	conn    *grpc.ClientConn
	rpc     pb.EventServiceClient
	timeout time.Duration
	retry   RetryPolicy
}

type settings struct {
	token       string
	tlsConfig   *tls.Config
	timeout     time.Duration
	retry       RetryPolicy
	throttle    ThrottlePolicy
	dialOptions []grpc.DialOption
}

// Option configures a Client.
type Option func(*settings)

// WithToken sends "authorization: Bearer <token>" on every call (the sidecar's auth_token).
// The token is sent over plaintext too: the sidecar listens on loopback or a unix socket
// unless it serves TLS.
func WithToken(token string) Option { return func(s *settings) { s.token = token } }

// WithTLS connects with TLS (config may be nil for the system roots); without it the
// connection is plaintext.
func WithTLS(config *tls.Config) Option {
	return func(s *settings) {
		if config == nil {
			config = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		s.tlsConfig = config
	}
}

// WithTimeout sets the deadline of each unary call attempt (default DefaultTimeout); a
// context with a sooner deadline wins. Zero means no default deadline.
func WithTimeout(timeout time.Duration) Option { return func(s *settings) { s.timeout = timeout } }

// WithRetry replaces the retry policy of Publish and PublishBatch (default DefaultRetry).
// RetryPolicy{} (MaxAttempts 0) or NoRetry turns retries off.
func WithRetry(policy RetryPolicy) Option { return func(s *settings) { s.retry = policy } }

// WithThrottle replaces the client-side throttle of Publish and PublishBatch (default
// DefaultThrottle); NoThrottle sends every call.
func WithThrottle(policy ThrottlePolicy) Option { return func(s *settings) { s.throttle = policy } }

// WithDialOptions adds gRPC dial options (interceptors, OpenTelemetry stats handlers, ...).
func WithDialOptions(options ...grpc.DialOption) Option {
	return func(s *settings) { s.dialOptions = append(s.dialOptions, options...) }
}

// New connects lazily to the sidecar at target ("host:port" or "unix:/path"); the first call
// opens the connection.
func New(target string, options ...Option) (*Client, error) {
	config := settings{timeout: DefaultTimeout, retry: DefaultRetry, throttle: DefaultThrottle}
	for _, option := range options {
		option(&config)
	}
	transport := insecure.NewCredentials()
	if config.tlsConfig != nil {
		transport = credentials.NewTLS(config.tlsConfig)
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		// A sidecar restart takes seconds: reconnect within a few, not gRPC's default two
		// minutes of backoff at worst.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second,
			},
			// gRPC's default: a connection attempt on a loaded machine may take seconds.
			MinConnectTimeout: 20 * time.Second,
		}),
	}
	if config.token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearerToken(config.token)))
	}
	var interceptors []grpc.UnaryClientInterceptor
	if config.throttle.Ratio > 0 {
		// First in the chain: a call held back never reaches the application's interceptors.
		interceptors = append(interceptors, ThrottleInterceptor(config.throttle))
	}
	// With or without the throttle, a refusal's hint may come only as the pushback trailer.
	dial = append(dial, grpc.WithChainUnaryInterceptor(append(interceptors, pushbackInterceptor)...))
	dial = append(dial, config.dialOptions...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, fmt.Errorf("dualstream: target %q: %w", target, err)
	}
	return &Client{conn: conn, rpc: pb.NewEventServiceClient(conn), timeout: config.timeout, retry: config.retry}, nil
}

// Close closes the connection; streams still open end with an error.
func (c *Client) Close() error { return c.conn.Close() }

// Status returns the sidecar's detailed status (the generated message, see GetStatusResponse).
func (c *Client) Status(ctx context.Context) (*pb.GetStatusResponse, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	response, err := c.rpc.GetStatus(ctx, &pb.GetStatusRequest{})
	if err != nil {
		return nil, fromRPC(err)
	}
	return response, nil
}

func (c *Client) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.timeout)
}

// bearerToken is per-call metadata; it does not require TLS (see WithToken).
type bearerToken string

func (t bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (bearerToken) RequireTransportSecurity() bool { return false }
