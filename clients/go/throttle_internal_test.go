package dualstream

// Unit tests of the throttle's arithmetic, with a given clock and a given random draw.

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// stepped is a throttle whose clock moves only when the test says and whose draw is fixed.
func stepped(t *testing.T, draw float64) (*throttle, *time.Time) {
	t.Helper()
	throttle := newThrottle(DefaultThrottle)
	now := throttle.started
	throttle.now = func() time.Time { return now }
	throttle.draw = func() float64 { return draw }
	return throttle, &now
}

var capacityRefusal = &Error{Code: codes.ResourceExhausted, RetryAfter: 80 * time.Millisecond}

func TestThrottleSendsEverythingBelowMinRequests(t *testing.T) {
	throttle, _ := stepped(t, 0)
	for range DefaultThrottle.MinRequests {
		if refusal := throttle.admit(); refusal != nil {
			t.Fatalf("refused below MinRequests: %v", refusal)
		}
		throttle.record(capacityRefusal)
	}
	if throttle.admit() == nil {
		t.Fatal("after MinRequests refusals and a draw of 0, the next call must be held back")
	}
}

func TestThrottleNeverHoldsBackWhileTheSidecarAccepts(t *testing.T) {
	throttle, _ := stepped(t, 0)
	for range 1000 {
		if refusal := throttle.admit(); refusal != nil {
			t.Fatalf("refused while every call was accepted: %v", refusal)
		}
		throttle.record(nil)
	}
}

func TestThrottleOddsFollowRequestsAndAccepts(t *testing.T) {
	// 100 refused: the odds are 100/101, so a draw of 0.98 is held back and 0.995 is not.
	throttle, _ := stepped(t, 0.98)
	for range 100 {
		throttle.admit()
		throttle.record(capacityRefusal)
	}
	refusal := throttle.admit()
	if refusal == nil || !refusal.Throttled || refusal.Code != codes.ResourceExhausted {
		t.Fatalf("want a local refusal, got %v", refusal)
	}
	if refusal.RetryAfter != capacityRefusal.RetryAfter {
		t.Errorf("a local refusal must repeat the sidecar's last hint, got %v", refusal.RetryAfter)
	}
	want := "the sidecar refused 100 of this client's last 101 calls as past capacity"
	if !strings.Contains(refusal.Message, want) || !strings.HasSuffix(refusal.Message, "retry in 80 ms") {
		t.Errorf("message %q", refusal.Message)
	}
	throttle.draw = func() float64 { return 0.995 }
	if refusal := throttle.admit(); refusal != nil {
		t.Errorf("a draw above the odds must be sent: %v", refusal)
	}
	// 60 refused and 50 accepted: 110 - 1.2*50 = 50 of 111 requests; 0.44 is held back, 0.46 not.
	balanced, _ := stepped(t, 0.44)
	for number := range 110 {
		balanced.admit()
		if number < 50 {
			balanced.record(nil)
		} else {
			balanced.record(capacityRefusal)
		}
	}
	if balanced.admit() == nil {
		t.Error("want the call held back at odds 50/111 and a draw of 0.44")
	}
	balanced.draw = func() float64 { return 0.46 }
	if refusal := balanced.admit(); refusal != nil {
		t.Errorf("want the call sent at odds 51/112 and a draw of 0.46: %v", refusal)
	}
}

func TestThrottleForgetsWhatLeftTheWindow(t *testing.T) {
	throttle, now := stepped(t, 0)
	for range 100 {
		throttle.admit()
		throttle.record(capacityRefusal)
	}
	*now = now.Add(DefaultThrottle.Window / 2)
	if throttle.admit() == nil {
		t.Fatal("half a window later the refusals still count")
	}
	*now = now.Add(DefaultThrottle.Window)
	if refusal := throttle.admit(); refusal != nil {
		t.Fatalf("a window later the refusals are forgotten: %v", refusal)
	}
}

func TestDeadlinesCountAgainstAndOtherErrorsFor(t *testing.T) {
	throttle, _ := stepped(t, 0)
	for range 50 {
		throttle.admit()
		throttle.record(&Error{Code: codes.DeadlineExceeded})
	}
	if throttle.admit() == nil {
		t.Error("calls that ran out of time are not accepted ones")
	}
	other, _ := stepped(t, 0)
	for range 50 {
		other.admit()
		other.record(&Error{Code: codes.InvalidArgument})
		other.record(&Error{Code: codes.ResourceExhausted}) // No hint: a size limit, not capacity.
	}
	if refusal := other.admit(); refusal != nil {
		t.Errorf("answers other than a capacity refusal are accepts: %v", refusal)
	}
}

func TestNoThrottleIsNone(t *testing.T) {
	if newThrottle(NoThrottle) != nil {
		t.Error("NoThrottle must not make a throttle")
	}
}

func TestUnansweredCallsDoNotThrottleUntilMinRequestsAnswers(t *testing.T) {
	throttle, _ := stepped(t, 0)
	for range 100 { // A burst of calls sent at once, none answered yet.
		if refusal := throttle.admit(); refusal != nil {
			t.Fatalf("refused before any answer: %v", refusal)
		}
	}
	for range DefaultThrottle.MinRequests {
		throttle.record(nil)
	}
	// 100 attempts, 20 accepted: the 80 still waiting weigh against the sidecar.
	if throttle.admit() == nil {
		t.Error("with MinRequests answers in, calls still waiting must count against the sidecar")
	}
}
