// Command loadgen drives unary Publish or PublishBatch calls at a gRPC server in a closed loop
// and prints one JSON object: calls and events per second, latency percentiles, errors by
// status code and its own CPU use. It is the benchmark's cheap load client: the Python one
// (bench/loadgen.py) needs most of a core for the load an empty grpc.aio handler can take,
// which on two cores starves the server being measured.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/dualstream/dualstream/bench/gopeer/internal/rawgrpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers from protos/dualstream/v1/event_service.proto.
const (
	eventType       = 2
	eventSourceType = 3
	eventSourceID   = 4
	eventData       = 5
	requestEvent    = 1 // PublishRequest.event and PublishBatchRequest.events alike.
)

func event(sourceID string, payload []byte) []byte {
	var message []byte
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
		message = protowire.AppendBytes(message, event("s"+strconv.Itoa((worker+i)%64), payload))
	}
	return message
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	return float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
}

func main() {
	target := flag.String("target", "127.0.0.1:50051", "server address")
	seconds := flag.Float64("seconds", 10, "how long to run")
	concurrency := flag.Int("concurrency", 64, "calls in flight")
	connections := flag.Int("connections", 1, "TCP connections the calls are spread over")
	batch := flag.Int("batch", 1, "events per call: 1 calls Publish, more PublishBatch")
	payloadSize := flag.Int("payload", 200, "payload bytes")
	flag.Parse()

	method := "/dualstream.v1.EventService/Publish"
	if *batch > 1 {
		method = "/dualstream.v1.EventService/PublishBatch"
	}
	clients := rawgrpc.Connect(*target, *connections)
	for _, connection := range clients {
		defer connection.Close()
	}
	payload := make([]byte, *payloadSize)
	ctx := context.Background()
	// One warm-up call per connection, so connecting is not timed.
	for _, connection := range clients {
		warm, reply := request(0, *batch, payload), []byte(nil)
		if err := connection.Invoke(ctx, method, &warm, &reply); err != nil {
			log.Fatal(err)
		}
	}

	var (
		mutex     sync.Mutex
		latencies []time.Duration
		errors    = map[string]int{}
		group     sync.WaitGroup
	)
	cpuBefore, started := cpuSeconds(), time.Now()
	deadline := started.Add(time.Duration(*seconds * float64(time.Second)))
	for worker := range *concurrency {
		group.Add(1)
		go func() {
			defer group.Done()
			connection := clients[worker%len(clients)]
			message, reply := request(worker, *batch, payload), []byte(nil)
			var own []time.Duration
			failed := map[string]int{}
			for time.Now().Before(deadline) {
				callStarted := time.Now()
				if err := connection.Invoke(ctx, method, &message, &reply); err != nil {
					failed[status.Code(err).String()]++
					continue
				}
				own = append(own, time.Since(callStarted))
			}
			mutex.Lock()
			latencies = append(latencies, own...)
			for code, count := range failed {
				errors[code] += count
			}
			mutex.Unlock()
		}()
	}
	group.Wait()
	elapsed := time.Since(started).Seconds()
	result := map[string]any{
		"calls_per_s":         float64(len(latencies)) / elapsed,
		"events_per_s":        float64(len(latencies)**batch) / elapsed,
		"errors":              errors,
		"loadgen_cpu_percent": 100 * (cpuSeconds() - cpuBefore) / elapsed,
	}
	for name, value := range rawgrpc.Percentiles(latencies) {
		result[name] = value
	}
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		log.Fatal(err)
	}
}
