package dualstream

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/dualstream/dualstream/clients/go/gen/dualstream/v1"
)

// Event is one event to publish. Type, SourceType and SourceID are required; an empty ID gets
// a UUIDv7 from the client (so that a retry sends the same id).
type Event struct {
	ID          string
	Type        string
	SourceType  string
	SourceID    string
	Data        []byte
	ContentType string
	// Time is when the event happened; zero means when the sidecar received it.
	Time time.Time
	// Attributes become `ce_<name>` Kafka headers.
	Attributes map[string]string
}

func (e Event) proto() *pb.Event {
	message := &pb.Event{
		Id: e.ID, Type: e.Type, SourceType: e.SourceType, SourceId: e.SourceID,
		Data: e.Data, ContentType: e.ContentType, Attributes: e.Attributes,
	}
	if !e.Time.IsZero() {
		message.Time = timestamppb.New(e.Time)
	}
	return message
}

func eventFromProto(message *pb.Event) *Event {
	event := &Event{
		ID: message.GetId(), Type: message.GetType(), SourceType: message.GetSourceType(),
		SourceID: message.GetSourceId(), Data: message.GetData(), ContentType: message.GetContentType(),
		Attributes: message.GetAttributes(),
	}
	if message.GetTime() != nil {
		event.Time = message.GetTime().AsTime()
	}
	return event
}

// PublishResult says where Kafka stored an event and whether live subscribers were told
// (Notified false: Redis was unreachable; the event is durable all the same).
type PublishResult struct {
	ID        string
	Topic     string
	Partition int32
	Offset    int64
	Notified  bool
}

func publishResultFromProto(message *pb.PublishResponse) PublishResult {
	return PublishResult{
		ID: message.GetId(), Topic: message.GetTopic(), Partition: message.GetPartition(),
		Offset: message.GetOffset(), Notified: message.GetNotified(),
	}
}

// BatchResult is the outcome of one event of a batch: Published, or Err (an *Error).
type BatchResult struct {
	ID        string
	Published *PublishResult
	Err       error
}

// Publish writes one event and returns once Kafka acknowledged it. On UNAVAILABLE it retries
// with the same id, as the client's RetryPolicy allows.
func (c *Client) Publish(ctx context.Context, event Event) (PublishResult, error) {
	if event.ID == "" {
		event.ID = NewEventID()
	}
	request := &pb.PublishRequest{Event: event.proto()}
	var response *pb.PublishResponse
	err := retrying(ctx, c.retry, func() error {
		callCtx, cancel := c.callContext(ctx)
		defer cancel()
		var err error
		response, err = c.rpc.Publish(callCtx, request)
		return fromRPC(err)
	})
	if err != nil {
		return PublishResult{}, err
	}
	return publishResultFromProto(response), nil
}

// PublishBatch writes several events in one call and returns one result per event, in order.
// One invalid event rejects the whole batch with INVALID_ARGUMENT (its Field names the event,
// e.g. "events[3].type") and nothing is written. When the whole call fails UNAVAILABLE, or
// some events fail UNAVAILABLE, those are sent again with the same ids, as the RetryPolicy
// allows; the error is returned only when the call fails as a whole.
func (c *Client) PublishBatch(ctx context.Context, events []Event) ([]BatchResult, error) {
	messages := make([]*pb.Event, len(events))
	for i, event := range events {
		if event.ID == "" {
			event.ID = NewEventID()
		}
		messages[i] = event.proto()
	}
	results := make([]BatchResult, len(events))
	pending := make([]int, len(events)) // Indexes of the events still to send.
	for i := range pending {
		pending[i] = i
	}
	err := retrying(ctx, c.retry, func() error {
		request := &pb.PublishBatchRequest{Events: make([]*pb.Event, len(pending))}
		for i, index := range pending {
			request.Events[i] = messages[index]
		}
		callCtx, cancel := c.callContext(ctx)
		defer cancel()
		response, err := c.rpc.PublishBatch(callCtx, request)
		if err != nil {
			return fromRPC(err)
		}
		var again []int
		for i, item := range response.GetResults() {
			index := pending[i]
			results[index] = batchResultFromProto(item)
			if failure, ok := results[index].Err.(*Error); ok && failure.Temporary() {
				again = append(again, index)
			}
		}
		pending = again
		if len(pending) > 0 {
			// Some events were not acknowledged: retry just those, as a temporary failure.
			return newError(codes.Unavailable, "some events of the batch were not acknowledged", nil)
		}
		return nil
	})
	if err != nil && len(pending) == len(events) {
		return nil, err
	}
	return results, nil
}

func batchResultFromProto(item *pb.PublishBatchResult) BatchResult {
	if published := item.GetPublished(); published != nil {
		result := publishResultFromProto(published)
		return BatchResult{ID: item.GetId(), Published: &result}
	}
	failure := item.GetError()
	return BatchResult{
		ID:  item.GetId(),
		Err: newError(codes.Code(failure.GetCode()), failure.GetMessage(), nil),
	}
}
