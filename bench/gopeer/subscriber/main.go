// Command subscriber opens Subscribe streams on a dualstream sidecar and records when each
// notification arrives, for the benchmark's latency and fan-out figures.
//
// It is the cheap client the figures need: a Python gRPC client costs about as much CPU per
// message as the sidecar itself, so on a small machine it, not the sidecar, would be measured.
// It has no generated code: the request is encoded and the responses are read with protowire,
// through a codec that passes bytes unchanged. Receipt times are CLOCK_MONOTONIC seconds, the
// clock Python's time.monotonic reads, so the harness can compare them with its send times.
//
// With --max-per-message above 1 the streams opt in to NotificationBatch messages; every
// notification of one message gets the message's receipt time. Gaps are counted, not waited
// out: a stream that fell behind ends when the timeout passes or SIGTERM arrives, and the
// harness counts what is missing.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"log"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dualstream/dualstream/bench/gopeer/internal/rawgrpc"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers from protos/dualstream/v1/event_service.proto.
const (
	requestSources        = 1
	requestMaxPerMessage  = 7
	sourceType            = 1
	sourceID              = 2
	responseSubscribed    = 1
	responseNotification  = 2
	responseGap           = 3
	responseNotifications = 5
	batchNotification     = 1
	gapMissed             = 2
	notificationID        = 1
)

func subscribeRequest(typ, id string, maxPerMessage int) []byte {
	var source []byte
	source = protowire.AppendTag(source, sourceType, protowire.BytesType)
	source = protowire.AppendString(source, typ)
	source = protowire.AppendTag(source, sourceID, protowire.BytesType)
	source = protowire.AppendString(source, id)
	var request []byte
	request = protowire.AppendTag(request, requestSources, protowire.BytesType)
	request = protowire.AppendBytes(request, source)
	if maxPerMessage > 1 {
		request = protowire.AppendTag(request, requestMaxPerMessage, protowire.VarintType)
		request = protowire.AppendVarint(request, uint64(maxPerMessage))
	}
	return request
}

// fields calls visit with each field of message, in wire order, until visit returns false.
func fields(message []byte, visit func(number protowire.Number, wireType protowire.Type, value []byte, varint uint64) bool) error {
	for len(message) > 0 {
		number, wireType, n := protowire.ConsumeTag(message)
		if n < 0 {
			return protowire.ParseError(n)
		}
		message = message[n:]
		var value []byte
		var varint uint64
		switch wireType {
		case protowire.BytesType:
			value, n = protowire.ConsumeBytes(message)
		case protowire.VarintType:
			varint, n = protowire.ConsumeVarint(message)
		default:
			n = protowire.ConsumeFieldValue(number, wireType, message)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		message = message[n:]
		if !visit(number, wireType, value, varint) {
			return nil
		}
	}
	return nil
}

// kind returns which oneof field a SubscribeResponse holds, and that field's bytes.
func kind(response []byte) (protowire.Number, []byte, error) {
	var (
		found protowire.Number
		bytes []byte
	)
	err := fields(response, func(number protowire.Number, wireType protowire.Type, value []byte, _ uint64) bool {
		if wireType != protowire.BytesType {
			return true
		}
		found, bytes = number, value
		return false
	})
	if err == nil && found == 0 {
		err = errors.New("empty response")
	}
	return found, bytes, err
}

func notificationIDOf(notification []byte) string {
	id := ""
	_ = fields(notification, func(number protowire.Number, wireType protowire.Type, value []byte, _ uint64) bool {
		if number == notificationID && wireType == protowire.BytesType {
			id = string(value)
			return false
		}
		return true
	})
	return id
}

// notificationIDs returns the ids of a NotificationBatch's notifications, in order.
func notificationIDs(batch []byte) []string {
	var ids []string
	_ = fields(batch, func(number protowire.Number, wireType protowire.Type, value []byte, _ uint64) bool {
		if number == batchNotification && wireType == protowire.BytesType {
			ids = append(ids, notificationIDOf(value))
		}
		return true
	})
	return ids
}

func gapMissedOf(gap []byte) int64 {
	var missed int64
	_ = fields(gap, func(number protowire.Number, wireType protowire.Type, _ []byte, varint uint64) bool {
		if number == gapMissed && wireType == protowire.VarintType {
			missed = int64(varint)
		}
		return true
	})
	return missed
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
	maxPerMessage := flag.Int("max-per-message", 0, "opt in to NotificationBatch messages of up to this many")
	events := flag.Int("events", 1, "notifications each stream waits for")
	ready := flag.String("ready", "", "file touched once every stream is live")
	out := flag.String("out", "", "file the receipts are written to, as JSON")
	timeout := flag.Float64("timeout", 120, "longest to wait for the notifications, in seconds")
	flag.Parse()

	clients := rawgrpc.Connect(*target, *connections)
	for _, client := range clients {
		defer client.Close()
	}
	// SIGTERM ends the streams early, and the receipts so far are written as usual.
	signals, stopSignals := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stopSignals()
	ctx, cancel := context.WithTimeout(signals, time.Duration(*timeout*float64(time.Second)))
	defer cancel()
	description := &grpc.StreamDesc{StreamName: "Subscribe", ServerStreams: true}
	request := subscribeRequest(*typ, *id, *maxPerMessage)

	var (
		live, done             sync.WaitGroup
		mutex                  sync.Mutex
		all                    []receipt
		messages, gaps, missed atomic.Int64
		failed                 atomic.Int64
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
					if ctx.Err() == nil {
						failed.Add(1) // The sidecar ended the stream; the harness counts what is missing.
					}
					return
				}
				at := rawgrpc.Monotonic()
				messages.Add(1)
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
				case responseNotifications:
					for _, id := range notificationIDs(value) {
						own = append(own, receipt{id, at})
					}
				case responseGap:
					gaps.Add(1)
					missed.Add(gapMissedOf(value))
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
		"receipts":       receipts,
		"cpu_percent":    100 * cpu.Seconds() / time.Since(started).Seconds(),
		"messages":       messages.Load(),
		"gaps":           gaps.Load(),
		"missed":         missed.Load(),
		"streams_failed": failed.Load(),
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out, result, 0o644); err != nil {
		log.Fatal(err)
	}
}
