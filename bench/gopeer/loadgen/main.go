// Command loadgen drives unary Publish or PublishBatch calls at a gRPC server and prints one
// JSON object: calls and events per second, latency percentiles, errors by status code and its
// own CPU use. It is the benchmark's cheap load client: the Python one (bench/loadgen.py) needs
// most of a core for the load an empty grpc.aio handler can take, which on two cores starves
// the server being measured.
//
// Modes: "closed" keeps -concurrency calls in flight; "open" starts calls on a schedule at
// -rate per second whatever the answers (latency counts from the scheduled start, so a client
// or server falling behind shows); "burst" starts -calls calls at once. Refusals are told
// apart: RESOURCE_EXHAUSTED with a retry hint (the grpc-retry-pushback-ms trailer or a
// google.rpc.RetryInfo detail) is counted as "refused_with_retry_hint". With -throttle the
// calls go through the Go client's adaptive throttle (dualstream.DefaultThrottle), as an
// application using that client would; calls it holds back unsent are counted as "throttled",
// and timed like the others, from their scheduled start.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"log"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/dualstream/dualstream/bench/gopeer/internal/rawgrpc"
	dualstream "github.com/dualstream/dualstream/clients/go"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers from protos/dualstream/v1/event_service.proto.
const (
	eventID         = 1
	eventType       = 2
	eventSourceType = 3
	eventSourceID   = 4
	eventData       = 5
	requestEvent    = 1 // PublishRequest.event and PublishBatchRequest.events alike.
)

func event(id, sourceID string, payload []byte) []byte {
	var message []byte
	if id != "" {
		message = protowire.AppendTag(message, eventID, protowire.BytesType)
		message = protowire.AppendString(message, id)
	}
	message = protowire.AppendTag(message, eventType, protowire.BytesType)
	message = protowire.AppendString(message, "bench")
	message = protowire.AppendTag(message, eventSourceType, protowire.BytesType)
	message = protowire.AppendString(message, "bench")
	message = protowire.AppendTag(message, eventSourceID, protowire.BytesType)
	message = protowire.AppendString(message, sourceID)
	message = protowire.AppendTag(message, eventData, protowire.BytesType)
	return protowire.AppendBytes(message, payload)
}

// request is a PublishRequest (events == 1) or a PublishBatchRequest.
func request(worker, events int, payload []byte) []byte {
	var message []byte
	for i := range events {
		message = protowire.AppendTag(message, requestEvent, protowire.BytesType)
		message = protowire.AppendBytes(message, event("", "s"+strconv.Itoa((worker+i)%64), payload))
	}
	return message
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	return float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
}

// hasRetryHint tells whether a failed call carried a retry hint.
func hasRetryHint(err error, trailer metadata.MD) bool {
	if len(trailer.Get("grpc-retry-pushback-ms")) > 0 {
		return true
	}
	for _, detail := range status.Convert(err).Details() {
		if _, ok := detail.(*errdetails.RetryInfo); ok {
			return true
		}
	}
	return false
}

// codeNames are the status codes' canonical names, as gRPC's other languages and the
// Python harness spell them (Go's String() says "Canceled" and "ResourceExhausted").
var codeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED",
	codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS",
	codes.Unauthenticated: "UNAUTHENTICATED",
}

// tally collects the outcome of every call; safe for concurrent use.
type tally struct {
	mutex     sync.Mutex
	latencies []time.Duration
	refusals  []time.Duration
	errors    map[string]int
	examples  map[string]string
	hinted    int
	throttled []time.Duration
}

func (t *tally) record(took time.Duration, err error, trailer metadata.MD) {
	t.mutex.Lock()
	defer t.mutex.Unlock()
	if err == nil {
		t.latencies = append(t.latencies, took)
		return
	}
	var failure *dualstream.Error
	if errors.As(err, &failure) && failure.Throttled {
		t.throttled = append(t.throttled, took)
		return
	}
	code := status.Code(err)
	t.errors[codeNames[code]]++
	t.examples[codeNames[code]] = status.Convert(err).Message()
	if code == codes.ResourceExhausted {
		t.refusals = append(t.refusals, took)
		if hasRetryHint(err, trailer) {
			t.hinted++
		}
	}
}

func main() {
	target := flag.String("target", "127.0.0.1:50051", "server address")
	mode := flag.String("mode", "closed", "closed, open or burst")
	seconds := flag.Float64("seconds", 10, "how long to run (closed and open)")
	concurrency := flag.Int("concurrency", 64, "calls in flight (closed)")
	rate := flag.Float64("rate", 1000, "calls started per second (open)")
	calls := flag.Int("calls", 3000, "calls started at once (burst)")
	connections := flag.Int("connections", 1, "TCP connections the calls are spread over")
	batch := flag.Int("batch", 1, "events per call: 1 calls Publish, more PublishBatch")
	payloadSize := flag.Int("payload", 200, "payload bytes")
	sourceID := flag.String("source-id", "", "publish every event on this source, with ids <source-id>-<n> (open)")
	sentOut := flag.String("sent-out", "", "write [id, monotonic start time] of every call here, as JSON (open)")
	throttle := flag.Bool("throttle", false, "hold calls back with the Go client's default throttle")
	flag.Parse()

	method := "/dualstream.v1.EventService/Publish"
	if *batch > 1 {
		method = "/dualstream.v1.EventService/PublishBatch"
	}
	var dial []grpc.DialOption
	if *throttle {
		// One throttle for all the connections, as one client would have.
		dial = append(dial, grpc.WithUnaryInterceptor(dualstream.ThrottleInterceptor(dualstream.DefaultThrottle)))
	}
	clients := rawgrpc.Connect(*target, *connections, dial...)
	for _, connection := range clients {
		defer connection.Close()
	}
	payload := make([]byte, *payloadSize)
	ctx := context.Background()
	// One warm-up call per connection, so connecting is not timed. A server that refuses it
	// (past capacity already) is still connected to.
	for _, connection := range clients {
		warm, reply := request(0, *batch, payload), []byte(nil)
		if err := connection.Invoke(ctx, method, &warm, &reply); err != nil && status.Code(err) != codes.ResourceExhausted {
			log.Fatal(err)
		}
	}

	results := &tally{errors: map[string]int{}, examples: map[string]string{}}
	call := func(connection *grpc.ClientConn, message []byte, started time.Time) {
		var reply []byte
		var trailer metadata.MD
		err := connection.Invoke(ctx, method, &message, &reply, grpc.Trailer(&trailer))
		results.record(time.Since(started), err, trailer)
	}
	var group sync.WaitGroup
	var sent [][2]any
	cpuBefore, started := cpuSeconds(), time.Now()
	switch *mode {
	case "closed":
		deadline := started.Add(time.Duration(*seconds * float64(time.Second)))
		for worker := range *concurrency {
			group.Add(1)
			go func() {
				defer group.Done()
				connection := clients[worker%len(clients)]
				message := request(worker, *batch, payload)
				for time.Now().Before(deadline) {
					call(connection, message, time.Now())
				}
			}()
		}
	case "open":
		total := int(*seconds * *rate)
		interval := time.Duration(float64(time.Second) / *rate)
		for number := range total {
			scheduled := started.Add(time.Duration(number) * interval)
			time.Sleep(time.Until(scheduled))
			message := request(number, *batch, payload)
			if *sourceID != "" {
				id := *sourceID + "-" + strconv.Itoa(number)
				message = protowire.AppendBytes(protowire.AppendTag(nil, requestEvent, protowire.BytesType), event(id, *sourceID, payload))
				sent = append(sent, [2]any{id, rawgrpc.Monotonic()})
			}
			group.Add(1)
			go func() {
				defer group.Done()
				call(clients[number%len(clients)], message, scheduled)
			}()
		}
	case "burst":
		for number := range *calls {
			message := request(number, *batch, payload)
			group.Add(1)
			go func() {
				defer group.Done()
				call(clients[number%len(clients)], message, started)
			}()
		}
	default:
		log.Fatalf("unknown mode %q", *mode)
	}
	group.Wait()
	elapsed := time.Since(started).Seconds()
	if *sentOut != "" {
		encoded, err := json.Marshal(sent)
		if err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(*sentOut, encoded, 0o644); err != nil {
			log.Fatal(err)
		}
	}
	result := map[string]any{
		"calls":                   len(results.latencies),
		"events":                  len(results.latencies) * *batch,
		"calls_per_s":             float64(len(results.latencies)) / elapsed,
		"events_per_s":            float64(len(results.latencies)**batch) / elapsed,
		"errors":                  results.errors,
		"error_messages":          results.examples,
		"refused_with_retry_hint": results.hinted,
		"throttled":               len(results.throttled),
		"throttled_refusal":       rawgrpc.Percentiles(results.throttled),
		"refusal":                 rawgrpc.Percentiles(results.refusals),
		"loadgen_cpu_percent":     100 * (cpuSeconds() - cpuBefore) / elapsed,
	}
	if *mode == "open" {
		result["rate"] = *rate
	}
	for name, value := range rawgrpc.Percentiles(results.latencies) {
		result[name] = value
	}
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		log.Fatal(err)
	}
}
