// Package rawgrpc holds what the benchmark's Go clients share: a gRPC codec that passes
// message bytes through (so they need no generated code), connections that use it, the
// monotonic clock the Python harness also reads, and latency percentiles.
package rawgrpc

import (
	"log"
	"sort"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
)

// Connect opens count plaintext connections to target that use Codec, with options added. Each is a TCP
// connection of its own, so the sidecar's workers each get some; close them when done.
func Connect(target string, count int, options ...grpc.DialOption) []*grpc.ClientConn {
	connections := make([]*grpc.ClientConn, count)
	options = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(Codec{})),
	}, options...)
	for i := range connections {
		connection, err := grpc.NewClient(target, options...)
		if err != nil {
			log.Fatal(err)
		}
		connections[i] = connection
	}
	return connections
}

// Codec hands message bytes through unchanged; messages are *[]byte.
type Codec struct{}

var _ encoding.Codec = Codec{}

// Marshal returns the bytes as they are.
func (Codec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }

// Unmarshal copies the bytes into v.
func (Codec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append((*(v.(*[]byte)))[:0], data...)
	return nil
}

// Name names the codec.
func (Codec) Name() string { return "raw" }

// Monotonic is CLOCK_MONOTONIC in seconds, the clock Python's time.monotonic reads, so that
// times taken in different processes on one machine compare.
func Monotonic() float64 {
	var now unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &now); err != nil {
		log.Fatal(err)
	}
	return float64(now.Sec) + float64(now.Nsec)/1e9
}

// Percentiles sorts the latencies and returns p50, p99, p99.9 and the maximum in milliseconds.
func Percentiles(latencies []time.Duration) map[string]float64 {
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	at := func(q float64) float64 {
		if len(latencies) == 0 {
			return 0
		}
		index := min(int(q*float64(len(latencies))), len(latencies)-1)
		return float64(latencies[index].Microseconds()) / 1000
	}
	return map[string]float64{"p50_ms": at(0.5), "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": at(1)}
}
