package dualstream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/dualstream/dualstream/clients/go/gen/dualstream/v1"
)

// ThrottlePolicy is the client's half of overload handling: adaptive client-side throttling
// (Google SRE book, "Handling Overload"). Past its capacity the sidecar refuses publishes at
// once with RESOURCE_EXHAUSTED and a retry hint, but refusing still costs it about what an
// empty call costs, so at twice its capacity it is saturated refusing and calls wait seconds
// to be refused. The client therefore counts, over the last Window, the publish attempts it
// made (requests, counted when made, so that calls left waiting at a sidecar that queues them
// weigh against it before any refusal) and those the sidecar answered other than with a
// refusal past capacity or DEADLINE_EXCEEDED (accepts), and refuses an attempt itself,
// without sending it, with probability
//
//	max(0, (requests - Ratio*accepts) / (requests + 1))
//
// so that it sends about Ratio times what the sidecar takes on. Only Publish and PublishBatch
// are throttled.
type ThrottlePolicy struct {
	// Ratio is how many attempts the client sends per one the sidecar accepts; 0 turns the
	// throttle off. Below 2 it acts at twice the capacity; 1.2 keeps the sidecar's own
	// refusals few enough to stay cheap.
	Ratio float64
	// Window is how far back attempts count, in ten steps.
	Window time.Duration
	// MinRequests: until the sidecar has answered this many attempts within the window,
	// nothing is held back, so a handful of refusals do not throttle a quiet client, and a
	// burst of calls not yet answered does not throttle one that has just started.
	MinRequests int
}

// DefaultThrottle is on by default (the same in the TypeScript and Java clients; Python's is
// opt-in).
var DefaultThrottle = ThrottlePolicy{Ratio: 1.2, Window: 5 * time.Second, MinRequests: 20}

// NoThrottle sends every attempt.
var NoThrottle = ThrottlePolicy{}

// throttleBuckets is how many steps the window slides in.
const throttleBuckets = 10

// noHintRetry is a local refusal's hint when the sidecar never gave one.
const noHintRetry = 100 * time.Millisecond

// throttledMethods are the calls the throttle applies to.
var throttledMethods = map[string]bool{
	pb.EventService_Publish_FullMethodName:      true,
	pb.EventService_PublishBatch_FullMethodName: true,
}

type throttleBucket struct {
	step int64
	// Attempts (counted when made, so that calls waiting at a sidecar that queues them weigh
	// against it), attempts answered, answered other than by a refusal past capacity or
	// DEADLINE_EXCEEDED, and refusals past capacity.
	requests, answered, accepts, refusals int
}

// throttle counts attempts per step of the window and draws the local refusals. Safe for
// concurrent use.
type throttle struct {
	policy   ThrottlePolicy
	step     time.Duration
	started  time.Time
	now      func() time.Time
	draw     func() float64
	mutex    sync.Mutex
	buckets  [throttleBuckets]throttleBucket
	lastHint time.Duration
}

func newThrottle(policy ThrottlePolicy) *throttle {
	if policy.Ratio <= 0 {
		return nil
	}
	if policy.Window <= 0 {
		policy.Window = DefaultThrottle.Window
	}
	return &throttle{
		policy: policy, step: max(policy.Window/throttleBuckets, time.Millisecond),
		started: time.Now(), now: time.Now, draw: rand.Float64,
	}
}

// bucket is the current step's counts, emptied when the step is new.
func (t *throttle) bucket() *throttleBucket {
	step := int64(t.now().Sub(t.started) / t.step)
	bucket := &t.buckets[step%throttleBuckets]
	if bucket.step != step {
		*bucket = throttleBucket{step: step}
	}
	return bucket
}

// totals sums the steps still in the window.
func (t *throttle) totals() throttleBucket {
	var sum throttleBucket
	current := t.bucket().step
	for _, bucket := range t.buckets {
		if current-bucket.step < throttleBuckets {
			sum.requests += bucket.requests
			sum.answered += bucket.answered
			sum.accepts += bucket.accepts
			sum.refusals += bucket.refusals
		}
	}
	return sum
}

// admit counts an attempt and returns nil to send it, or the local refusal.
func (t *throttle) admit() *Error {
	t.mutex.Lock()
	defer t.mutex.Unlock()
	window := t.totals()
	t.bucket().requests++
	if window.answered < t.policy.MinRequests {
		return nil
	}
	requests := window.requests
	odds := (float64(requests) - t.policy.Ratio*float64(window.accepts)) / float64(requests+1)
	if odds <= 0 || t.draw() >= odds {
		return nil
	}
	hint := t.lastHint
	if hint <= 0 {
		hint = noHintRetry
	}
	message := fmt.Sprintf("not sent: the sidecar refused %d of this client's last %d calls as past "+
		"capacity, so the client holds calls back (client-side throttling); retry in %d ms",
		window.refusals, requests+1, hint.Milliseconds())
	return &Error{Code: codes.ResourceExhausted, Message: message, RetryAfter: hint, Throttled: true}
}

// record counts how the sidecar answered an attempt the throttle let through.
func (t *throttle) record(err error) {
	code := status.Code(err)
	hint := retryAfter(err)
	t.mutex.Lock()
	defer t.mutex.Unlock()
	bucket := t.bucket()
	bucket.answered++
	switch {
	case code == codes.ResourceExhausted && hint > 0:
		bucket.refusals++
		t.lastHint = hint
	case code != codes.DeadlineExceeded:
		bucket.accepts++
	}
}

// ThrottleInterceptor is the throttle as a gRPC unary client interceptor, for code that calls
// the sidecar's generated stubs directly (a Client has one already, see WithThrottle). Its
// local refusals are *Error with Throttled set.
func ThrottleInterceptor(policy ThrottlePolicy) grpc.UnaryClientInterceptor {
	throttle := newThrottle(policy)
	return func(ctx context.Context, method string, request, reply any, conn *grpc.ClientConn,
		invoker grpc.UnaryInvoker, options ...grpc.CallOption,
	) error {
		if throttle == nil || !throttledMethods[method] {
			return invoker(ctx, method, request, reply, conn, options...)
		}
		if refusal := throttle.admit(); refusal != nil {
			return refusal
		}
		var trailer metadata.MD
		err := withPushback(invoker(ctx, method, request, reply, conn, append(options, grpc.Trailer(&trailer))...), trailer)
		throttle.record(err)
		return err
	}
}

// pushbackInterceptor reads the grpc-retry-pushback-ms trailer of every call, so a Client's
// errors carry a hint that came only there whether or not it throttles.
func pushbackInterceptor(ctx context.Context, method string, request, reply any, conn *grpc.ClientConn,
	invoker grpc.UnaryInvoker, options ...grpc.CallOption,
) error {
	var trailer metadata.MD
	return withPushback(invoker(ctx, method, request, reply, conn, append(options, grpc.Trailer(&trailer))...), trailer)
}

// withPushback makes a capacity refusal whose hint came only as the grpc-retry-pushback-ms
// trailer an *Error carrying it; other errors are returned as they are.
func withPushback(err error, trailer metadata.MD) error {
	if err == nil || status.Code(err) != codes.ResourceExhausted || retryAfter(err) > 0 {
		return err
	}
	values := trailer.Get("grpc-retry-pushback-ms")
	if len(values) == 0 {
		return err
	}
	millis, parseErr := strconv.ParseInt(values[0], 10, 64)
	if parseErr != nil || millis <= 0 {
		return err
	}
	failure, _ := fromRPC(err).(*Error)
	failure.RetryAfter = time.Duration(millis) * time.Millisecond
	return failure
}

// retryAfter is a capacity refusal's retry hint: an *Error's RetryAfter, or the
// google.rpc.RetryInfo detail of a RESOURCE_EXHAUSTED status; 0 for anything else.
func retryAfter(err error) time.Duration {
	var failure *Error
	if errors.As(err, &failure) {
		return failure.RetryAfter
	}
	st, ok := status.FromError(err)
	if !ok {
		return 0
	}
	return statusRetryAfter(st)
}

func statusRetryAfter(st *status.Status) time.Duration {
	if st.Code() != codes.ResourceExhausted {
		return 0
	}
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.RetryInfo); ok {
			return info.GetRetryDelay().AsDuration()
		}
	}
	return 0
}
