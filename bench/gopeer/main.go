// Command gopeer is the benchmark's peer: the design note's in-process dual publisher, in Go.
//
// It writes each event to Kafka with kafka-go (acks=all, keyed by source id, batch timeout of a
// few milliseconds) and then publishes a small notification to Redis with go-redis, exactly as
// the note's DualPublisher does, and prints one JSON object with the events per second reached.
// kafka-go has no idempotent producer; it is otherwise given the same settings as every other
// Kafka client in the benchmark.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dualstream/dualstream/bench/gopeer/internal/rawgrpc"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
)

// Event is the note's event: ids and a payload.
type Event struct {
	ID         string `json:"id"`
	Type       string `json:"type"`
	SourceType string `json:"source_type"`
	SourceID   string `json:"source_id"`
	Data       []byte `json:"data"`
}

// DualPublisher writes to Kafka (must succeed) and then to Redis (best effort).
type DualPublisher struct {
	kafka       *kafka.Writer
	redis       *redis.Client
	redisFailed atomic.Int64
}

func (p *DualPublisher) message(event Event) kafka.Message {
	payload, _ := json.Marshal(event)
	return kafka.Message{Key: []byte(event.SourceID), Value: payload}
}

func channel(event Event) string {
	return fmt.Sprintf("events:%s:%s", event.SourceType, event.SourceID)
}

func notification(event Event) []byte {
	payload, _ := json.Marshal(map[string]string{"id": event.ID, "type": event.Type, "source_id": event.SourceID})
	return payload
}

// Publish writes one event and waits for Kafka's acknowledgement, then notifies Redis.
func (p *DualPublisher) Publish(ctx context.Context, event Event) error {
	if err := p.kafka.WriteMessages(ctx, p.message(event)); err != nil {
		return fmt.Errorf("kafka publish failed: %w", err)
	}
	if err := p.redis.Publish(ctx, channel(event), notification(event)).Err(); err != nil {
		p.redisFailed.Add(1)
	}
	return nil
}

// PublishBatch writes a batch to Kafka and then notifies Redis in one pipeline.
func (p *DualPublisher) PublishBatch(ctx context.Context, events []Event) error {
	messages := make([]kafka.Message, len(events))
	for i, event := range events {
		messages[i] = p.message(event)
	}
	if err := p.kafka.WriteMessages(ctx, messages...); err != nil {
		return fmt.Errorf("kafka batch failed: %w", err)
	}
	pipe := p.redis.Pipeline()
	for _, event := range events {
		pipe.Publish(ctx, channel(event), notification(event))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		p.redisFailed.Add(int64(len(events)))
	}
	return nil
}

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "Kafka bootstrap servers, comma separated")
	redisAddr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	topic := flag.String("topic", "gopeer", "Kafka topic")
	batch := flag.Int("batch", 1, "events per PublishBatch call; 1 means Publish")
	concurrency := flag.Int("concurrency", 64, "concurrent publishing goroutines")
	seconds := flag.Float64("seconds", 10, "how long to publish")
	batchTimeout := flag.Duration("batch-timeout", 2*time.Millisecond, "kafka-go's BatchTimeout")
	batchBytes := flag.Int64("batch-bytes", 65536, "kafka-go's BatchBytes")
	payloadSize := flag.Int("payload", 200, "payload bytes")
	flag.Parse()

	writer := &kafka.Writer{
		Addr:         kafka.TCP(strings.Split(*brokers, ",")...),
		Topic:        *topic,
		Balancer:     &kafka.Hash{},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: *batchTimeout,
		BatchBytes:   *batchBytes,
		// Enough messages per batch that BatchBytes, not the count, is what limits a batch.
		BatchSize: 10000,
	}
	client := redis.NewClient(&redis.Options{Addr: *redisAddr})
	publisher := &DualPublisher{kafka: writer, redis: client}
	defer func() {
		if err := writer.Close(); err != nil {
			log.Print(err)
		}
		_ = client.Close()
	}()

	payload := make([]byte, *payloadSize)
	ctx := context.Background()
	deadline := time.Now().Add(time.Duration(*seconds * float64(time.Second)))
	var (
		mutex     sync.Mutex
		latencies []time.Duration
		failed    atomic.Int64
		group     sync.WaitGroup
	)
	started := time.Now()
	for worker := 0; worker < *concurrency; worker++ {
		group.Add(1)
		go func(worker int) {
			defer group.Done()
			var own []time.Duration
			for sequence := 0; time.Now().Before(deadline); sequence++ {
				events := make([]Event, *batch)
				for i := range events {
					events[i] = Event{
						ID: fmt.Sprintf("%d-%d-%d", worker, sequence, i), Type: "bench",
						SourceType: "bench", SourceID: fmt.Sprintf("s%d", (worker+i)%64), Data: payload,
					}
				}
				callStarted := time.Now()
				var err error
				if *batch == 1 {
					err = publisher.Publish(ctx, events[0])
				} else {
					err = publisher.PublishBatch(ctx, events)
				}
				if err != nil {
					failed.Add(1)
					continue
				}
				own = append(own, time.Since(callStarted))
			}
			mutex.Lock()
			latencies = append(latencies, own...)
			mutex.Unlock()
		}(worker)
	}
	group.Wait()
	elapsed := time.Since(started).Seconds()
	result := map[string]any{
		"calls_per_s":  float64(len(latencies)) / elapsed,
		"events_per_s": float64(len(latencies)**batch) / elapsed,
		"failed_calls": failed.Load(),
		"redis_failed": publisher.redisFailed.Load(),
		"concurrency":  *concurrency,
	}
	for name, value := range rawgrpc.Percentiles(latencies) {
		result[name] = value
	}
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		log.Fatal(err)
	}
}
