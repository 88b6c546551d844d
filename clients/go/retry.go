package dualstream

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"time"
)

// RetryPolicy bounds the retries of Publish and PublishBatch on UNAVAILABLE and on refusals
// past capacity (RESOURCE_EXHAUSTED with a retry hint, waiting at least the hint). A retry sends the
// same event ids (the client assigns a UUIDv7 to an event without one before the first
// attempt), so an event written by an attempt whose answer was lost is at worst written twice
// under one id, which consumers deduplicate; it is never lost or renamed.
type RetryPolicy struct {
	// MaxAttempts counts the first attempt: 1 (or 0) means no retry.
	MaxAttempts int
	// InitialBackoff is the wait before the first retry; it doubles up to MaxBackoff, and each
	// wait is drawn at random between half of it and all of it ("equal jitter").
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// MaxElapsed, when set, stops retrying once this long has passed since the first attempt.
	MaxElapsed time.Duration
}

// DefaultRetry rides out a sidecar restart: 8 attempts, 3.5 to 7 s of waits in all (the same
// default as the TypeScript client and Python's Retry()).
var DefaultRetry = RetryPolicy{MaxAttempts: 8, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second}

// NoRetry makes every call a single attempt.
var NoRetry = RetryPolicy{MaxAttempts: 1}

// backoffState yields the waits of a jittered exponential backoff.
type backoffState struct {
	next, max time.Duration
}

func newBackoff(initial, maxDelay time.Duration) *backoffState {
	if initial <= 0 {
		initial = 100 * time.Millisecond
	}
	if maxDelay < initial {
		maxDelay = initial
	}
	return &backoffState{next: initial, max: maxDelay}
}

func (b *backoffState) wait() time.Duration {
	current := b.next
	b.next = min(2*b.next, b.max)
	half := current / 2
	return half + rand.N(current-half+1)
}

// sleep waits d or until ctx ends; false if ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// retrying runs attempt until it succeeds, fails with an error that is not temporary, or the
// policy is spent; the last error is returned.
func retrying(ctx context.Context, policy RetryPolicy, attempt func() error) error {
	started := time.Now()
	waits := newBackoff(policy.InitialBackoff, policy.MaxBackoff)
	for number := 1; ; number++ {
		err := attempt()
		if err == nil || !temporary(err) || number >= max(policy.MaxAttempts, 1) {
			return err
		}
		// A refusal past capacity says how long to wait; sooner would only be refused again.
		wait := max(waits.wait(), retryAfter(err))
		if policy.MaxElapsed > 0 && time.Since(started)+wait > policy.MaxElapsed {
			return err
		}
		if !sleep(ctx, wait) {
			return err
		}
	}
}

func temporary(err error) bool {
	var failure *Error
	return errors.As(err, &failure) && failure.Temporary()
}

// NewEventID returns a UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits, so
// ids sort by creation time like the ones the sidecar assigns.
func NewEventID() string {
	var id [16]byte
	if _, err := cryptorand.Read(id[6:]); err != nil {
		panic("dualstream: no randomness for an event id: " + err.Error())
	}
	var millis [8]byte
	binary.BigEndian.PutUint64(millis[:], uint64(time.Now().UnixMilli()))
	copy(id[:6], millis[2:])
	id[6] = 0x70 | id[6]&0x0f // version 7
	id[8] = 0x80 | id[8]&0x3f // variant 10
	text := hex.EncodeToString(id[:])
	return text[0:8] + "-" + text[8:12] + "-" + text[12:16] + "-" + text[16:20] + "-" + text[20:]
}
