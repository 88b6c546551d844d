package dualstream

import (
	"context"
	"errors"
	"io"
	"iter"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/dualstream/dualstream/clients/go/gen/dualstream/v1"
)

// Source names one entity whose events to follow; ID "*" follows every entity of Type.
type Source struct {
	Type string
	ID   string
}

// Policy says what the sidecar does when a stream cannot deliver everything live.
type Policy int32

const (
	// PolicyGap drops what cannot be delivered and sends a *Gap with the cursor to resume from.
	PolicyGap Policy = Policy(pb.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_GAP)
	// PolicyReplay fills the hole from Kafka: nothing is missed.
	PolicyReplay Policy = Policy(pb.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_REPLAY)
	// PolicyClose ends the stream (RESOURCE_EXHAUSTED or UNAVAILABLE). Automatic resume is off
	// by default with it: the application asked to be told.
	PolicyClose Policy = Policy(pb.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_CLOSE)
)

// Message is one message of a stream: *Notification, *Gap or *CaughtUp. Cursor resumes after
// it.
type Message interface {
	Cursor() string
	isMessage()
}

// Notification says an event was published to a followed source.
type Notification struct {
	ID, Type, SourceType, SourceID, Topic string
	Partition                             int32
	Offset                                int64
	// Replayed is true when it came from Kafka (a resume or a replay) rather than live.
	Replayed bool
	// Event is the whole event, when the subscription asked WithIncludeData.
	Event *Event
	// TraceParent and TraceState are the W3C trace context to continue the event's trace
	// from; TraceParent is empty when the event was published without a trace.
	TraceParent, TraceState string
	cursor                  string
}

// Cursor resumes after this notification.
func (n *Notification) Cursor() string { return n.cursor }

// TraceCarrier returns the trace context as W3C headers, ready for an OpenTelemetry
// propagator: propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier(n.TraceCarrier())).
func (n *Notification) TraceCarrier() map[string]string {
	carrier := map[string]string{}
	if n.TraceParent != "" {
		carrier["traceparent"] = n.TraceParent
		if n.TraceState != "" {
			carrier["tracestate"] = n.TraceState
		}
	}
	return carrier
}

func (*Notification) isMessage() {}

// GapReason says why notifications were missed.
type GapReason string

// The reasons of a Gap.
const (
	GapSlowConsumer GapReason = "SLOW_CONSUMER"
	GapRedisOutage  GapReason = "REDIS_OUTAGE"
	GapNotNotified  GapReason = "NOT_NOTIFIED"
	GapExpired      GapReason = "EXPIRED"
)

// Gap reports notifications the stream did not deliver; resuming from its cursor (a new
// Subscribe WithResumeCursor) replays them, except those Kafka no longer holds (GapExpired).
type Gap struct {
	Reason GapReason
	// Missed counts them when the sidecar knows, else 0.
	Missed       int64
	Since, Until time.Time
	cursor       string
}

// Cursor resumes after the gap, replaying what it missed.
func (g *Gap) Cursor() string { return g.cursor }
func (*Gap) isMessage()       {}

// CaughtUp marks the end of a replay from Kafka; what follows is live.
type CaughtUp struct {
	Replayed int64
	cursor   string
}

// Cursor resumes after the replay.
func (c *CaughtUp) Cursor() string { return c.cursor }
func (*CaughtUp) isMessage()       {}

type subscribeSettings struct {
	request       *pb.SubscribeRequest
	autoResume    *bool
	resumeTimeout time.Duration
}

// SubscribeOption configures Subscribe.
type SubscribeOption func(*subscribeSettings)

// WithTypes follows only events of these types.
func WithTypes(types ...string) SubscribeOption {
	return func(s *subscribeSettings) { s.request.Types = append(s.request.Types, types...) }
}

// WithPolicy sets the slow-consumer policy (default PolicyGap).
func WithPolicy(policy Policy) SubscribeOption {
	return func(s *subscribeSettings) {
		s.request.SlowConsumerPolicy = pb.SlowConsumerPolicy(policy)
	}
}

// WithIncludeData puts each event's payload and attributes in its notification (Event).
func WithIncludeData() SubscribeOption {
	return func(s *subscribeSettings) { s.request.IncludeData = true }
}

// WithResumeCursor replays what was published after cursor, then goes live.
func WithResumeCursor(cursor string) SubscribeOption {
	return func(s *subscribeSettings) { s.request.ResumeCursor = cursor }
}

// WithStartEarliest replays everything Kafka still holds, then goes live.
func WithStartEarliest() SubscribeOption {
	return func(s *subscribeSettings) {
		s.request.Start = &pb.StartPosition{Position: &pb.StartPosition_Earliest{Earliest: true}}
	}
}

// WithStartTime replays what Kafka stored at or after t, then goes live.
func WithStartTime(t time.Time) SubscribeOption {
	return func(s *subscribeSettings) {
		s.request.Start = &pb.StartPosition{Position: &pb.StartPosition_Time{Time: timestamppb.New(t)}}
	}
}

// DefaultBatching is how many notifications the sidecar may pack in one message unless
// WithBatching says otherwise. A stream with a backlog then costs the sidecar a fraction per
// notification, so it catches up instead of being held back into gaps.
const DefaultBatching = 64

// WithBatching lets the sidecar pack up to max notifications in one message when the stream
// has a backlog (replays, bursts); the client unpacks them, so the application still gets one
// *Notification at a time, each with its own cursor. The default is DefaultBatching; 1 keeps
// one notification per message.
func WithBatching(max uint32) SubscribeOption {
	return func(s *subscribeSettings) { s.request.MaxNotificationsPerMessage = max }
}

// WithAutoResume turns automatic resume on or off (default: on, except with PolicyClose).
func WithAutoResume(on bool) SubscribeOption {
	return func(s *subscribeSettings) { s.autoResume = &on }
}

// WithResumeTimeout bounds how long automatic resume keeps trying to reconnect before the
// stream fails with the last error (default 5 minutes; each successful reconnect starts over).
func WithResumeTimeout(timeout time.Duration) SubscribeOption {
	return func(s *subscribeSettings) { s.resumeTimeout = timeout }
}

// Subscription is a live stream. Range over Messages to read it; Close (or cancelling the
// context given to Subscribe) ends it.
type Subscription struct {
	client        *Client
	ctx           context.Context
	cancel        context.CancelFunc
	request       *pb.SubscribeRequest
	autoResume    bool
	resumeTimeout time.Duration
	channels      []string

	mu      sync.Mutex
	stream  grpc.ServerStreamingClient[pb.SubscribeResponse]
	cursor  string
	resumes int
}

// Subscribe opens a stream on sources and returns once the sidecar confirmed it live: every
// event published after that is delivered. Its errors are those of opening the stream (e.g.
// UNAUTHENTICATED, INVALID_ARGUMENT); later breaks are resumed automatically.
func (c *Client) Subscribe(ctx context.Context, sources []Source, options ...SubscribeOption) (*Subscription, error) {
	config := subscribeSettings{
		request:       &pb.SubscribeRequest{MaxNotificationsPerMessage: DefaultBatching},
		resumeTimeout: 5 * time.Minute,
	}
	for _, source := range sources {
		config.request.Sources = append(config.request.Sources, &pb.Source{SourceType: source.Type, SourceId: source.ID})
	}
	for _, option := range options {
		option(&config)
	}
	autoResume := config.request.GetSlowConsumerPolicy() != pb.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_CLOSE
	if config.autoResume != nil {
		autoResume = *config.autoResume
	}
	streamCtx, cancel := context.WithCancel(ctx)
	subscription := &Subscription{
		client: c, ctx: streamCtx, cancel: cancel, request: config.request,
		autoResume: autoResume, resumeTimeout: config.resumeTimeout,
	}
	subscribed, err := subscription.open(config.request)
	if err != nil {
		cancel()
		return nil, err
	}
	subscription.channels = subscribed.GetChannels()
	subscription.cursor = subscribed.GetCursor()
	return subscription, nil
}

// open starts a stream with request and reads its first message, which must be `subscribed`.
func (s *Subscription) open(request *pb.SubscribeRequest) (*pb.Subscribed, error) {
	stream, err := s.client.rpc.Subscribe(s.ctx, request)
	if err != nil {
		return nil, fromRPC(err)
	}
	first, err := stream.Recv()
	if err != nil {
		return nil, fromRPC(err)
	}
	subscribed := first.GetSubscribed()
	if subscribed == nil {
		return nil, newError(codes.Internal, "the stream did not start with `subscribed`", nil)
	}
	s.mu.Lock()
	s.stream = stream
	s.mu.Unlock()
	return subscribed, nil
}

// Channels are the Redis channels and patterns the stream listens on.
func (s *Subscription) Channels() []string { return s.channels }

// Cursor is the cursor of the last message the application received (or of `subscribed`):
// resuming from it misses nothing and repeats nothing.
func (s *Subscription) Cursor() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cursor
}

// Resumes counts the automatic resumes so far.
func (s *Subscription) Resumes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resumes
}

// Close ends the stream; a range over Messages stops.
func (s *Subscription) Close() error {
	s.cancel()
	return nil
}

// Messages yields the stream's messages in order: (*Notification | *Gap | *CaughtUp, nil),
// or, once, (nil, err) when the stream ends with an error it does not resume from (the
// context's error after Close or cancel). When the stream breaks (the sidecar restarted, the
// network failed, UNAVAILABLE) it reconnects with jittered backoff and resumes from Cursor,
// so every event is yielded once, in per-source order, across the break; a Gap is yielded,
// never skipped. Read it from one goroutine.
func (s *Subscription) Messages() iter.Seq2[Message, error] {
	return func(yield func(Message, error) bool) {
		for {
			s.mu.Lock()
			stream := s.stream
			s.mu.Unlock()
			response, err := stream.Recv()
			if err != nil {
				if err = s.resume(err); err != nil {
					yield(nil, err)
					return
				}
				continue
			}
			for _, message := range messagesOf(response) {
				s.mu.Lock()
				s.cursor = message.Cursor()
				s.mu.Unlock()
				if !yield(message, nil) {
					s.cancel()
					return
				}
			}
		}
	}
}

// resume reconnects after the stream failed with cause, from the last cursor; it returns the
// error to give the application when it must not or cannot.
func (s *Subscription) resume(cause error) error {
	if s.ctx.Err() != nil { // Closed, or the caller's context ended.
		return s.ctx.Err()
	}
	failure := fromRPC(cause)
	if !s.autoResume || !resumable(cause) {
		return failure
	}
	deadline := time.Now().Add(s.resumeTimeout)
	waits := newBackoff(100*time.Millisecond, 5*time.Second)
	for {
		if !sleep(s.ctx, waits.wait()) {
			return s.ctx.Err()
		}
		request := proto.Clone(s.request).(*pb.SubscribeRequest)
		request.ResumeCursor = s.Cursor()
		request.Start = nil
		_, err := s.open(request)
		if err == nil {
			s.mu.Lock()
			s.resumes++
			s.mu.Unlock()
			return nil
		}
		if s.ctx.Err() != nil {
			return s.ctx.Err()
		}
		if !resumable(err) || time.Now().After(deadline) {
			return err
		}
	}
}

// resumable: the stream broke, rather than being refused (auth, bad request, too many streams).
func resumable(err error) bool {
	if errors.Is(err, io.EOF) { // The sidecar ended the stream, which it does only when stopping.
		return true
	}
	var failure *Error
	if errors.As(fromRPC(err), &failure) {
		return failure.Code == codes.Unavailable
	}
	return false
}

func messagesOf(response *pb.SubscribeResponse) []Message {
	switch {
	case response.GetNotification() != nil:
		return []Message{notificationFromProto(response.GetNotification())}
	case response.GetNotifications() != nil:
		batch := response.GetNotifications().GetNotifications()
		messages := make([]Message, len(batch))
		for i, notification := range batch {
			messages[i] = notificationFromProto(notification)
		}
		return messages
	case response.GetGap() != nil:
		gap := response.GetGap()
		return []Message{&Gap{
			Reason: gapReason(gap.GetReason()), Missed: gap.GetMissed(), cursor: gap.GetCursor(),
			Since: gap.GetSince().AsTime(), Until: gap.GetUntil().AsTime(),
		}}
	case response.GetCaughtUp() != nil:
		return []Message{&CaughtUp{Replayed: response.GetCaughtUp().GetReplayed(), cursor: response.GetCaughtUp().GetCursor()}}
	}
	return nil // `subscribed` again, or a message type newer than this client: nothing to yield.
}

func notificationFromProto(n *pb.Notification) *Notification {
	notification := &Notification{
		ID: n.GetId(), Type: n.GetType(), SourceType: n.GetSourceType(), SourceID: n.GetSourceId(),
		Topic: n.GetTopic(), Partition: n.GetPartition(), Offset: n.GetOffset(), cursor: n.GetCursor(),
		Replayed: n.GetReplayed(), TraceParent: n.GetTraceparent(), TraceState: n.GetTracestate(),
	}
	if n.GetEvent() != nil {
		notification.Event = eventFromProto(n.GetEvent())
	}
	return notification
}

func gapReason(reason pb.GapReason) GapReason {
	return GapReason(strings.TrimPrefix(reason.String(), "GAP_REASON_"))
}
