package dualstream_test

// Unit tests of the client's own logic against an in-process fake EventService: which calls
// are retried and with what ids. The behaviour against the real sidecar is in stack_test.go and
// tests/clients/ (which kills it).

import (
	"context"
	"errors"
	"iter"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	dualstream "github.com/dualstream/dualstream/clients/go"
	pb "github.com/dualstream/dualstream/clients/go/gen/dualstream/v1"
)

// iterPull turns a subscription into a pull function: (message, err, ok).
func iterPull(s *dualstream.Subscription) (func() (dualstream.Message, error, bool), func()) {
	return iter.Pull2(s.Messages())
}

// flakyService fails its first `failures` calls with UNAVAILABLE and records every event id.
type flakyService struct {
	pb.UnimplementedEventServiceServer
	mu       sync.Mutex
	failures int
	seen     [][]string
}

func (f *flakyService) fail(ids ...string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = append(f.seen, ids)
	if f.failures > 0 {
		f.failures--
		return true
	}
	return false
}

func (f *flakyService) Publish(_ context.Context, request *pb.PublishRequest) (*pb.PublishResponse, error) {
	if f.fail(request.GetEvent().GetId()) {
		return nil, status.Error(codes.Unavailable, "Kafka is not connected")
	}
	return &pb.PublishResponse{Id: request.GetEvent().GetId(), Topic: "events", Offset: 7}, nil
}

func (f *flakyService) PublishBatch(_ context.Context, request *pb.PublishBatchRequest) (*pb.PublishBatchResponse, error) {
	var ids []string
	for _, event := range request.GetEvents() {
		ids = append(ids, event.GetId())
	}
	failing := f.fail(ids...)
	response := &pb.PublishBatchResponse{}
	for i, id := range ids {
		result := &pb.PublishBatchResult{Id: id}
		if failing && i%2 == 1 { // Every other event is not acknowledged this time.
			result.Outcome = &pb.PublishBatchResult_Error{Error: &pb.Error{Code: int32(codes.Unavailable), Message: "not acknowledged"}}
		} else {
			result.Outcome = &pb.PublishBatchResult_Published{Published: &pb.PublishResponse{Id: id, Offset: int64(i)}}
		}
		response.Results = append(response.Results, result)
	}
	return response, nil
}

func fakeClient(t *testing.T, service pb.EventServiceServer, options ...dualstream.Option) *dualstream.Client {
	t.Helper()
	listener := bufconn.Listen(1 << 20)
	server := grpc.NewServer()
	pb.RegisterEventServiceServer(server, service)
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	dial := func(ctx context.Context, _ string) (net.Conn, error) { return listener.DialContext(ctx) }
	options = append(options, dualstream.WithDialOptions(grpc.WithContextDialer(dial)))
	client, err := dualstream.New("passthrough:///fake", options...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

var quickRetry = dualstream.RetryPolicy{MaxAttempts: 4, InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}

func TestPublishRetriesUnavailableWithTheSameID(t *testing.T) {
	service := &flakyService{failures: 2}
	client := fakeClient(t, service, dualstream.WithRetry(quickRetry))
	result, err := client.Publish(context.Background(), dualstream.Event{Type: "t", SourceType: "s", SourceID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(service.seen) != 3 {
		t.Fatalf("want 3 attempts, got %d", len(service.seen))
	}
	for _, attempt := range service.seen {
		if attempt[0] == "" || attempt[0] != result.ID {
			t.Errorf("every attempt must carry the id %q the client assigned, got %v", result.ID, service.seen)
		}
	}
}

func TestPublishRetryIsBounded(t *testing.T) {
	service := &flakyService{failures: 100}
	client := fakeClient(t, service, dualstream.WithRetry(quickRetry))
	_, err := client.Publish(context.Background(), dualstream.Event{ID: "x", Type: "t", SourceType: "s", SourceID: "a"})
	var failure *dualstream.Error
	if !errors.As(err, &failure) || failure.Code != codes.Unavailable || !failure.Temporary() {
		t.Fatalf("want UNAVAILABLE after the retries, got %v", err)
	}
	if len(service.seen) != 4 {
		t.Errorf("want 4 attempts (MaxAttempts), got %d", len(service.seen))
	}
}

func TestNoRetryIsOneAttempt(t *testing.T) {
	service := &flakyService{failures: 1}
	client := fakeClient(t, service, dualstream.WithRetry(dualstream.NoRetry))
	if _, err := client.Publish(context.Background(), dualstream.Event{ID: "x", Type: "t"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("want UNAVAILABLE, got %v", err)
	}
	if len(service.seen) != 1 {
		t.Errorf("want 1 attempt, got %d", len(service.seen))
	}
}

func TestPublishBatchRetriesOnlyTheUnacknowledgedEvents(t *testing.T) {
	service := &flakyService{failures: 1}
	client := fakeClient(t, service, dualstream.WithRetry(quickRetry))
	events := make([]dualstream.Event, 4)
	for i := range events {
		events[i] = dualstream.Event{Type: "t", SourceType: "s", SourceID: "a"}
	}
	events[2].ID = "mine"
	results, err := client.PublishBatch(context.Background(), events)
	if err != nil {
		t.Fatal(err)
	}
	if len(service.seen) != 2 || len(service.seen[1]) != 2 {
		t.Fatalf("want the 2 unacknowledged events sent again, got %v", service.seen)
	}
	first := service.seen[0]
	if service.seen[1][0] != first[1] || service.seen[1][1] != first[3] || first[2] != "mine" {
		t.Errorf("the retry must reuse events 1 and 3's ids: %v", service.seen)
	}
	for i, result := range results {
		if result.Err != nil || result.Published == nil || result.ID != first[i] {
			t.Errorf("event %d: %+v", i, result)
		}
	}
}

func TestInvalidArgumentCarriesTheFieldPath(t *testing.T) {
	service := &invalidService{}
	client := fakeClient(t, service)
	_, err := client.Publish(context.Background(), dualstream.Event{ID: "x"})
	var failure *dualstream.Error
	if !errors.As(err, &failure) || failure.Field != "event.type" || failure.Temporary() {
		t.Fatalf("want a field path event.type, got %#v", err)
	}
	if !strings.Contains(err.Error(), "InvalidArgument") {
		t.Errorf("the message should say the code: %v", err)
	}
}

type invalidService struct {
	pb.UnimplementedEventServiceServer
}

func (invalidService) Publish(context.Context, *pb.PublishRequest) (*pb.PublishResponse, error) {
	return nil, status.Error(codes.InvalidArgument, "event.type: required")
}

func TestNewEventIDIsATimeOrderedUUIDv7(t *testing.T) {
	previous := dualstream.NewEventID()
	for range 100 {
		id := dualstream.NewEventID()
		if !uuidV7.MatchString(id) || id == previous {
			t.Fatalf("bad or repeated id %q", id)
		}
		if id[:13] < previous[:13] { // The first 48 bits are milliseconds.
			t.Fatalf("%q sorts before the earlier %q", id, previous)
		}
		previous = id
	}
}

// breakingStream serves Subscribe twice: the first stream delivers one notification and
// breaks with UNAVAILABLE; the second must resume from that notification's cursor, and sends
// a gap and a NotificationBatch.
type breakingStream struct {
	pb.UnimplementedEventServiceServer
	mu       sync.Mutex
	requests []*pb.SubscribeRequest
}

func notification(id, cursor string) *pb.Notification {
	return &pb.Notification{Id: id, SourceType: "s", SourceId: "a", Cursor: cursor, Traceparent: "00-" + id}
}

func (b *breakingStream) Subscribe(request *pb.SubscribeRequest, stream grpc.ServerStreamingServer[pb.SubscribeResponse]) error {
	b.mu.Lock()
	b.requests = append(b.requests, request)
	attempt := len(b.requests)
	b.mu.Unlock()
	send := func(response *pb.SubscribeResponse) { _ = stream.Send(response) }
	send(&pb.SubscribeResponse{Message: &pb.SubscribeResponse_Subscribed{Subscribed: &pb.Subscribed{Cursor: "c0"}}})
	if attempt == 1 {
		send(&pb.SubscribeResponse{Message: &pb.SubscribeResponse_Notification{Notification: notification("n1", "c1")}})
		return status.Error(codes.Unavailable, "the sidecar is shutting down")
	}
	send(&pb.SubscribeResponse{Message: &pb.SubscribeResponse_Gap{Gap: &pb.Gap{Reason: pb.GapReason_GAP_REASON_REDIS_OUTAGE, Cursor: "g"}}})
	send(&pb.SubscribeResponse{Message: &pb.SubscribeResponse_Notifications{Notifications: &pb.NotificationBatch{
		Notifications: []*pb.Notification{notification("n2", "c2"), notification("n3", "c3")},
	}}})
	<-stream.Context().Done()
	return nil
}

func TestSubscribeResumesFromTheLastCursorAndUnpacksBatches(t *testing.T) {
	service := &breakingStream{}
	client := fakeClient(t, service)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	subscription, err := client.Subscribe(ctx, []dualstream.Source{{Type: "s", ID: "*"}},
		dualstream.WithPolicy(dualstream.PolicyReplay), dualstream.WithStartEarliest(), dualstream.WithBatching(8))
	if err != nil {
		t.Fatal(err)
	}
	defer subscription.Close()
	var got []string
	for message, err := range subscription.Messages() {
		if err != nil {
			t.Fatal(err)
		}
		switch m := message.(type) {
		case *dualstream.Notification:
			got = append(got, m.ID+"@"+m.Cursor()+" "+m.TraceCarrier()["traceparent"])
		case *dualstream.Gap:
			got = append(got, "gap "+string(m.Reason)+"@"+m.Cursor())
		}
		if len(got) == 4 {
			break
		}
	}
	if strings.Join(got, ", ") != "n1@c1 00-n1, gap REDIS_OUTAGE@g, n2@c2 00-n2, n3@c3 00-n3" {
		t.Errorf("got %v", got)
	}
	if subscription.Resumes() != 1 || subscription.Cursor() != "c3" {
		t.Errorf("resumes %d, cursor %q", subscription.Resumes(), subscription.Cursor())
	}
	first, second := service.requests[0], service.requests[1]
	if first.GetResumeCursor() != "" || first.GetStart() == nil || first.GetMaxNotificationsPerMessage() != 8 {
		t.Errorf("first request: %v", first)
	}
	if second.GetResumeCursor() != "c1" || second.GetStart() != nil || second.GetSlowConsumerPolicy() != pb.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_REPLAY {
		t.Errorf("the resume must ask for the last cursor with the same options, without the start: %v", second)
	}
}

func TestSubscribeWithPolicyCloseSurfacesTheBreak(t *testing.T) {
	service := &breakingStream{}
	client := fakeClient(t, service)
	subscription, err := client.Subscribe(context.Background(), []dualstream.Source{{Type: "s", ID: "a"}},
		dualstream.WithPolicy(dualstream.PolicyClose))
	if err != nil {
		t.Fatal(err)
	}
	defer subscription.Close()
	var last error
	count := 0
	for message, err := range subscription.Messages() {
		if message != nil {
			count++
		}
		last = err
	}
	if count != 1 || status.Code(last) != codes.Unavailable {
		t.Errorf("want one notification then UNAVAILABLE, got %d and %v", count, last)
	}
	service.mu.Lock()
	defer service.mu.Unlock()
	if got := service.requests[0].GetMaxNotificationsPerMessage(); got != dualstream.DefaultBatching || dualstream.DefaultBatching != 64 {
		t.Errorf("streams take batches of up to 64 unless told otherwise, got %d", got)
	}
}

// refusingService refuses every publish as past capacity, with the sidecar's two hints (or
// only the pushback trailer), and counts the calls that reached it.
type refusingService struct {
	pb.UnimplementedEventServiceServer
	pushbackOnly bool
	mu           sync.Mutex
	calls        []time.Time
}

func (r *refusingService) Publish(ctx context.Context, _ *pb.PublishRequest) (*pb.PublishResponse, error) {
	r.mu.Lock()
	r.calls = append(r.calls, time.Now())
	r.mu.Unlock()
	_ = grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", "150"))
	refusal := status.New(codes.ResourceExhausted, "the sidecar is past capacity; retry in 150 ms")
	if !r.pushbackOnly {
		refusal, _ = refusal.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(150 * time.Millisecond)})
	}
	return nil, refusal.Err()
}

func (r *refusingService) reached() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

func TestCapacityRefusalCarriesTheHintAndIsRetriedNoSoonerThanIt(t *testing.T) {
	for _, tried := range []struct {
		pushbackOnly bool
		throttle     dualstream.ThrottlePolicy
	}{{false, dualstream.DefaultThrottle}, {true, dualstream.DefaultThrottle}, {true, dualstream.NoThrottle}} {
		pushbackOnly := tried.pushbackOnly
		service := &refusingService{pushbackOnly: pushbackOnly}
		retry := dualstream.RetryPolicy{MaxAttempts: 2, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}
		client := fakeClient(t, service, dualstream.WithRetry(retry), dualstream.WithThrottle(tried.throttle))
		_, err := client.Publish(context.Background(), dualstream.Event{Type: "t", SourceType: "s", SourceID: "a"})
		var failure *dualstream.Error
		if !errors.As(err, &failure) || failure.Code != codes.ResourceExhausted || failure.Throttled {
			t.Fatalf("want the sidecar's RESOURCE_EXHAUSTED, got %v", err)
		}
		if failure.RetryAfter != 150*time.Millisecond || !failure.Temporary() {
			t.Errorf("pushback only %v, throttle %+v: want a 150 ms hint on a temporary error, got %v", pushbackOnly, tried.throttle, failure.RetryAfter)
		}
		if len(service.calls) != 2 {
			t.Fatalf("want 2 attempts, got %d", len(service.calls))
		}
		if waited := service.calls[1].Sub(service.calls[0]); waited < 150*time.Millisecond {
			t.Errorf("the retry came %v after the refusal, sooner than its hint", waited)
		}
	}
}

func TestThrottleHoldsBackCallsTheSidecarKeepsRefusing(t *testing.T) {
	service := &refusingService{}
	client := fakeClient(t, service, dualstream.WithRetry(dualstream.NoRetry))
	throttled := 0
	for range 200 {
		_, err := client.Publish(context.Background(), dualstream.Event{Type: "t", SourceType: "s", SourceID: "a"})
		var failure *dualstream.Error
		if !errors.As(err, &failure) || failure.Code != codes.ResourceExhausted || failure.RetryAfter <= 0 {
			t.Fatalf("want a refusal with a hint, got %v", err)
		}
		if failure.Throttled {
			throttled++
			if !strings.HasPrefix(failure.Message, "not sent: ") {
				t.Errorf("a local refusal must say it was not sent: %q", failure.Message)
			}
		}
	}
	// Past MinRequests the odds of sending are about 1 in n, so almost all of the rest are held.
	if throttled < 100 || service.reached()+throttled != 200 {
		t.Errorf("want most of 200 calls held back by the client, got %d held, %d sent", throttled, service.reached())
	}
	unthrottled := &refusingService{}
	client = fakeClient(t, unthrottled, dualstream.WithRetry(dualstream.NoRetry), dualstream.WithThrottle(dualstream.NoThrottle))
	for range 50 {
		_, _ = client.Publish(context.Background(), dualstream.Event{Type: "t", SourceType: "s", SourceID: "a"})
	}
	if unthrottled.reached() != 50 {
		t.Errorf("NoThrottle must send every call, sent %d of 50", unthrottled.reached())
	}
}
