// Command subscriber opens Subscribe streams on a dualstream sidecar and records when each
// notification arrives, for the benchmark's latency and fan-out figures.
//
// It is the cheap client the figures need: a Python gRPC client costs about as much CPU per
// message as the sidecar itself, so on a small machine it, not the sidecar, would be measured.
// It has no generated code: the request is encoded and the responses are read with protowire,
// through a codec that passes bytes unchanged. Receipt times are CLOCK_MONOTONIC seconds, the
// clock Python's time.monotonic reads, so the harness can compare them with its send times.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"log"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/dualstream/dualstream/bench/gopeer/internal/rawgrpc"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers from protos/dualstream/v1/event_service.proto.
const (
	requestSources       = 1
	sourceType           = 1
	sourceID             = 2
	responseSubscribed   = 1
	responseNotification = 2
	notificationID       = 1
)

func subscribeRequest(typ, id string) []byte {
	var source []byte
	source = protowire.AppendTag(source, sourceType, protowire.BytesType)
	source = protowire.AppendString(source, typ)
	source = protowire.AppendTag(source, sourceID, protowire.BytesType)
	source = protowire.AppendString(source, id)
	var request []byte
	request = protowire.AppendTag(request, requestSources, protowire.BytesType)
	return protowire.AppendBytes(request, source)
}

// kind returns which oneof field a SubscribeResponse holds, and that field's bytes.
func kind(response []byte) (protowire.Number, []byte, error) {
	for len(response) > 0 {
		number, wireType, n := protowire.ConsumeTag(response)
		if n < 0 {
			return 0, nil, protowire.ParseError(n)
		}
		response = response[n:]
		if wireType != protowire.BytesType {
			n = protowire.ConsumeFieldValue(number, wireType, response)
			if n < 0 {
				return 0, nil, protowire.ParseError(n)
			}
			response = response[n:]
			continue
		}
		value, n := protowire.ConsumeBytes(response)
		if n < 0 {
			return 0, nil, protowire.ParseError(n)
		}
		return number, value, nil
	}
	return 0, nil, errors.New("empty response")
}

func notificationIDOf(notification []byte) string {
	for len(notification) > 0 {
		number, wireType, n := protowire.ConsumeTag(notification)
		if n < 0 {
			return ""
		}
		notification = notification[n:]
		if number == notificationID && wireType == protowire.BytesType {
			id, _ := protowire.ConsumeString(notification)
			return id
		}
		n = protowire.ConsumeFieldValue(number, wireType, notification)
		if n < 0 {
			return ""
		}
		notification = notification[n:]
	}
	return ""
}

type receipt struct {
	id string
	at float64
}

func main() {
	target := flag.String("target", "127.0.0.1:50051", "sidecar address")
	typ := flag.String("source-type", "bench", "source type")
	id := flag.String("source-id", "", "source id")
	streams := flag.Int("streams", 1, "streams to open")
	connections := flag.Int("connections", 1, "connections the streams are spread over, in turn")
	events := flag.Int("events", 1, "notifications each stream waits for")
	ready := flag.String("ready", "", "file touched once every stream is live")
	out := flag.String("out", "", "file the receipts are written to, as JSON")
	timeout := flag.Float64("timeout", 120, "longest to wait for the notifications, in seconds")
	flag.Parse()

	clients := rawgrpc.Connect(*target, *connections)
	for _, client := range clients {
		defer client.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(*timeout*float64(time.Second)))
	defer cancel()
	description := &grpc.StreamDesc{StreamName: "Subscribe", ServerStreams: true}
	request := subscribeRequest(*typ, *id)

	var (
		live, done sync.WaitGroup
		mutex      sync.Mutex
		all        []receipt
	)
	var usageBefore syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usageBefore)
	started := time.Now()
	for number := range *streams {
		live.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			stream, err := clients[number%len(clients)].NewStream(ctx, description, "/dualstream.v1.EventService/Subscribe")
			if err != nil {
				log.Fatal(err)
			}
			if err := stream.SendMsg(&request); err != nil {
				log.Fatal(err)
			}
			if err := stream.CloseSend(); err != nil {
				log.Fatal(err)
			}
			own := make([]receipt, 0, *events)
			isLive := false
			defer func() {
				if !isLive {
					live.Done()
				}
				mutex.Lock()
				all = append(all, own...)
				mutex.Unlock()
			}()
			var response []byte
			for len(own) < *events {
				if err := stream.RecvMsg(&response); err != nil {
					return // The timeout or the sidecar ended it; the harness counts what is missing.
				}
				at := rawgrpc.Monotonic()
				number, value, err := kind(response)
				if err != nil {
					log.Fatal(err)
				}
				switch number {
				case responseSubscribed:
					if !isLive {
						isLive = true
						live.Done()
					}
				case responseNotification:
					own = append(own, receipt{notificationIDOf(value), at})
				}
			}
		}()
	}
	live.Wait()
	if err := os.WriteFile(*ready, nil, 0o644); err != nil {
		log.Fatal(err)
	}
	done.Wait()
	var usageAfter syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usageAfter)
	cpu := time.Duration(usageAfter.Utime.Nano() - usageBefore.Utime.Nano() +
		usageAfter.Stime.Nano() - usageBefore.Stime.Nano())
	receipts := make([][2]any, len(all))
	for i, r := range all {
		receipts[i] = [2]any{r.id, r.at}
	}
	result, err := json.Marshal(map[string]any{
		"receipts":    receipts,
		"cpu_percent": 100 * cpu.Seconds() / time.Since(started).Seconds(),
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out, result, 0o644); err != nil {
		log.Fatal(err)
	}
}
