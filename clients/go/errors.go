package dualstream

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a failed call or a failed event of a batch. Use errors.As to reach it, or
// status.Code(err) for the code alone.
type Error struct {
	// Code is the gRPC status code: InvalidArgument, Unavailable, ResourceExhausted,
	// Unauthenticated, DeadlineExceeded, ...
	Code codes.Code
	// Message is the sidecar's explanation.
	Message string
	// Field is, for InvalidArgument, the path of the field at fault as the sidecar names it
	// first in Message, e.g. "event.type" or "events[3].source_type"; empty otherwise.
	Field string
	// RetryAfter is, for RESOURCE_EXHAUSTED refusing a publish past the sidecar's capacity,
	// the wait it asks for before a retry (its google.rpc.RetryInfo detail or
	// grpc-retry-pushback-ms trailer); 0 when the error carries no hint.
	RetryAfter time.Duration
	// Throttled: the client refused the call itself without sending it, because the sidecar
	// has been refusing calls as past capacity (see ThrottlePolicy).
	Throttled bool
	cause     error
}

func (e *Error) Error() string {
	return fmt.Sprintf("dualstream: %s: %s", e.Code, e.Message)
}

// Unwrap returns the underlying gRPC error, if any.
func (e *Error) Unwrap() error { return e.cause }

// GRPCStatus makes status.Code and status.FromError work on an *Error.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// Temporary reports whether the same call may succeed later unchanged: UNAVAILABLE (the
// sidecar restarting, Kafka briefly unreachable) or a refusal past capacity (RESOURCE_EXHAUSTED
// with a RetryAfter hint; nothing was written). Retrying a publish with the same event id is
// safe; consumers deduplicate on the id.
func (e *Error) Temporary() bool {
	return e.Code == codes.Unavailable || (e.Code == codes.ResourceExhausted && e.RetryAfter > 0)
}

func newError(code codes.Code, message string, cause error) *Error {
	failure := &Error{Code: code, Message: message, cause: cause}
	if code == codes.InvalidArgument {
		failure.Field = fieldPath(message)
	}
	return failure
}

// fromRPC turns an error of a gRPC call into an *Error (context errors keep their identity
// through Unwrap, so errors.Is(err, context.Canceled) still works).
func fromRPC(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return newError(status.Code(err), err.Error(), err)
	}
	failure := newError(st.Code(), st.Message(), err)
	failure.RetryAfter = statusRetryAfter(st)
	return failure
}

// fieldPath is the field path an INVALID_ARGUMENT message starts with ("events[3].type:
// empty"), or "" when the message does not start with one.
func fieldPath(message string) string {
	path, _, found := strings.Cut(message, ": ")
	if !found || path == "" || strings.ContainsAny(path, " \t") {
		return ""
	}
	return path
}
