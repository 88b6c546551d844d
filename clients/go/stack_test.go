package dualstream_test

// Integration tests against the real stack of `python -m stack.localstack with-stack` (Kafka,
// Redis, sidecars), found through DUALSTREAM_TEST_* (clients/README.md). `make test-go` runs
// them; without the stack they fail rather than skip.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	dualstream "github.com/dualstream/dualstream/clients/go"
)

// Generous: the machine running the tests is shared and loaded.
const patience = 60 * time.Second

func stackVariable(t *testing.T, name string) string {
	t.Helper()
	value := os.Getenv(name)
	if value == "" {
		t.Fatalf("%s is not set: run the tests with `make test-go` (python -m stack.localstack with-stack)", name)
	}
	return value
}

func connect(t *testing.T, targetVariable string, options ...dualstream.Option) *dualstream.Client {
	t.Helper()
	client, err := dualstream.New(stackVariable(t, targetVariable), options...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

// sourceType is a source type of this test's own, so tests never see each other's events.
func sourceType(t *testing.T) string {
	var random [5]byte
	_, _ = rand.Read(random[:])
	return "go" + hex.EncodeToString(random[:])
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	t.Cleanup(cancel)
	return ctx
}

var uuidV7 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestPublish(t *testing.T) {
	client := connect(t, "DUALSTREAM_TEST_TARGET")
	ctx := testContext(t)
	kind := sourceType(t)
	result, err := client.Publish(ctx, dualstream.Event{
		Type: "user.starred", SourceType: kind, SourceID: "octocat", Data: []byte(`{"repo":"hello"}`),
		ContentType: "application/json", Attributes: map[string]string{"tenant": "acme"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !uuidV7.MatchString(result.ID) {
		t.Errorf("the client should assign a UUIDv7, got %q", result.ID)
	}
	if result.Topic != stackVariable(t, "DUALSTREAM_TEST_TOPIC") || result.Offset < 0 || !result.Notified {
		t.Errorf("unexpected result %+v", result)
	}
	again, err := client.Publish(ctx, dualstream.Event{ID: "my-id", Type: "t", SourceType: kind, SourceID: "octocat"})
	if err != nil {
		t.Fatal(err)
	}
	if again.ID != "my-id" || again.Partition != result.Partition || again.Offset <= result.Offset {
		t.Errorf("a source's events go to one partition in order: %+v then %+v", result, again)
	}
}

func TestPublishBatchReturnsOneResultPerEventInOrder(t *testing.T) {
	client := connect(t, "DUALSTREAM_TEST_TARGET")
	kind := sourceType(t)
	events := []dualstream.Event{
		{ID: "b-0", Type: "t", SourceType: kind, SourceID: "a"},
		{Type: "t", SourceType: kind, SourceID: "a"},
		{ID: "b-2", Type: "t", SourceType: kind, SourceID: "a"},
	}
	results, err := client.PublishBatch(testContext(t), events)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 3 || results[0].ID != "b-0" || !uuidV7.MatchString(results[1].ID) || results[2].ID != "b-2" {
		t.Fatalf("results: %+v", results)
	}
	for i, result := range results {
		if result.Err != nil || result.Published == nil || result.Published.ID != result.ID {
			t.Errorf("event %d: %+v", i, result)
		}
		if i > 0 && result.Published.Offset <= results[i-1].Published.Offset {
			t.Errorf("event %d is not after event %d: %+v", i, i-1, results)
		}
	}
}

func TestPublishBatchWithOneBadEventNamesTheField(t *testing.T) {
	client := connect(t, "DUALSTREAM_TEST_TARGET")
	kind := sourceType(t)
	_, err := client.PublishBatch(testContext(t), []dualstream.Event{
		{Type: "t", SourceType: kind, SourceID: "a"},
		{Type: "t", SourceType: kind + ":bad", SourceID: "a"},
	})
	var failure *dualstream.Error
	if !errors.As(err, &failure) {
		t.Fatalf("want a *dualstream.Error, got %v", err)
	}
	if failure.Code != codes.InvalidArgument || failure.Field != "events[1].source_type" {
		t.Errorf("want INVALID_ARGUMENT on events[1].source_type, got %s on %q: %s", failure.Code, failure.Field, failure.Message)
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("status.Code should see the code, got %s", status.Code(err))
	}
}

func TestAuthRefusedWithoutTheTokenAndAcceptedWithIt(t *testing.T) {
	ctx := testContext(t)
	kind := sourceType(t)
	event := dualstream.Event{Type: "t", SourceType: kind, SourceID: "a"}
	anonymous := connect(t, "DUALSTREAM_TEST_AUTH_TARGET")
	if _, err := anonymous.Publish(ctx, event); status.Code(err) != codes.Unauthenticated {
		t.Errorf("publish without the token: want UNAUTHENTICATED, got %v", err)
	}
	if _, err := anonymous.Subscribe(ctx, []dualstream.Source{{Type: kind, ID: "a"}}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("subscribe without the token: want UNAUTHENTICATED, got %v", err)
	}
	wrong := connect(t, "DUALSTREAM_TEST_AUTH_TARGET", dualstream.WithToken("not-the-token"))
	if _, err := wrong.Publish(ctx, event); status.Code(err) != codes.Unauthenticated {
		t.Errorf("publish with a wrong token: want UNAUTHENTICATED, got %v", err)
	}
	allowed := connect(t, "DUALSTREAM_TEST_AUTH_TARGET", dualstream.WithToken(stackVariable(t, "DUALSTREAM_TEST_TOKEN")))
	if _, err := allowed.Publish(ctx, event); err != nil {
		t.Errorf("publish with the token: %v", err)
	}
}

// next reads the next n notifications, failing on a gap or an error.
func next(t *testing.T, messages func() (dualstream.Message, error, bool), n int) []*dualstream.Notification {
	t.Helper()
	var got []*dualstream.Notification
	for len(got) < n {
		message, err, ok := messages()
		if !ok || err != nil {
			t.Fatalf("stream ended after %d of %d notifications: %v", len(got), n, err)
		}
		switch m := message.(type) {
		case *dualstream.Notification:
			got = append(got, m)
		case *dualstream.Gap:
			t.Fatalf("unexpected gap: %+v", m)
		}
	}
	return got
}

func ids(notifications []*dualstream.Notification) []string {
	out := make([]string, len(notifications))
	for i, n := range notifications {
		out[i] = n.ID
	}
	return out
}

func publishAll(t *testing.T, client *dualstream.Client, events ...dualstream.Event) {
	t.Helper()
	for _, event := range events {
		if _, err := client.Publish(testContext(t), event); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSubscribeWithAWildcard(t *testing.T) {
	client := connect(t, "DUALSTREAM_TEST_TARGET")
	ctx := testContext(t)
	kind := sourceType(t)
	subscription, err := client.Subscribe(ctx, []dualstream.Source{{Type: kind, ID: "*"}})
	if err != nil {
		t.Fatal(err)
	}
	defer subscription.Close()
	if subscription.Cursor() == "" || len(subscription.Channels()) == 0 {
		t.Errorf("subscribed without a cursor or channels: %q %v", subscription.Cursor(), subscription.Channels())
	}
	publishAll(t, client,
		dualstream.Event{ID: "w-0", Type: "t", SourceType: kind, SourceID: "a"},
		dualstream.Event{ID: "w-1", Type: "t", SourceType: kind, SourceID: "b"},
		dualstream.Event{ID: "w-2", Type: "t", SourceType: "other" + kind, SourceID: "a"},
		dualstream.Event{ID: "w-3", Type: "t", SourceType: kind, SourceID: "a/b:c"},
	)
	pull, stop := iterPull(subscription)
	defer stop()
	got := next(t, pull, 3)
	if fmt.Sprint(ids(got)) != "[w-0 w-1 w-3]" {
		t.Errorf("want w-0 w-1 w-3, got %v", ids(got))
	}
	if got[1].SourceID != "b" || got[2].SourceID != "a/b:c" || got[0].Replayed || got[0].Cursor() == "" {
		t.Errorf("unexpected notifications %+v %+v", got[1], got[2])
	}
	if subscription.Cursor() != got[2].Cursor() {
		t.Errorf("the subscription's cursor should be the last message's")
	}
}

func TestResumeFromACursor(t *testing.T) {
	client := connect(t, "DUALSTREAM_TEST_TARGET")
	resumeFromACursor(t, client, client)
}

// The delivery process's own HTTP/2 server (--subscribe-server h2) speaks gRPC to this client
// as grpc-go's server would: live notifications, a resumed cursor's replay, live again.
func TestResumeFromACursorOnTheDeliveryProcess(t *testing.T) {
	resumeFromACursor(t, connect(t, "DUALSTREAM_TEST_TARGET"), connect(t, "DUALSTREAM_TEST_STREAMS_TARGET"))
}

func resumeFromACursor(t *testing.T, client, streams *dualstream.Client) {
	ctx := testContext(t)
	kind := sourceType(t)
	sources := []dualstream.Source{{Type: kind, ID: "a"}}
	first, err := streams.Subscribe(ctx, sources)
	if err != nil {
		t.Fatal(err)
	}
	publishAll(t, client,
		dualstream.Event{ID: "r-0", Type: "t", SourceType: kind, SourceID: "a"},
		dualstream.Event{ID: "r-1", Type: "t", SourceType: kind, SourceID: "a"},
	)
	pull, stop := iterPull(first)
	cursor := next(t, pull, 1)[0].Cursor()
	stop()
	first.Close()
	publishAll(t, client, dualstream.Event{ID: "r-2", Type: "t", SourceType: kind, SourceID: "a"})

	resumed, err := streams.Subscribe(ctx, sources, dualstream.WithResumeCursor(cursor))
	if err != nil {
		t.Fatal(err)
	}
	defer resumed.Close()
	pull, stop = iterPull(resumed)
	defer stop()
	replayed := next(t, pull, 2)
	if fmt.Sprint(ids(replayed)) != "[r-1 r-2]" || !replayed[0].Replayed || !replayed[1].Replayed {
		t.Errorf("want r-1 r-2 replayed, got %v (%+v)", ids(replayed), replayed)
	}
	publishAll(t, client, dualstream.Event{ID: "r-3", Type: "t", SourceType: kind, SourceID: "a"})
	live := next(t, pull, 1)
	if live[0].ID != "r-3" || live[0].Replayed {
		t.Errorf("want r-3 live, got %+v", live[0])
	}
}

func TestReplayInBatchesIsUnpacked(t *testing.T) {
	client := connect(t, "DUALSTREAM_TEST_TARGET")
	ctx := testContext(t)
	kind := sourceType(t)
	var events []dualstream.Event
	var want []string
	for i := range 40 {
		id := fmt.Sprintf("n-%02d", i)
		events = append(events, dualstream.Event{ID: id, Type: "t", SourceType: kind, SourceID: "a"})
		want = append(want, id)
	}
	if _, err := client.PublishBatch(ctx, events); err != nil {
		t.Fatal(err)
	}
	subscription, err := client.Subscribe(ctx, []dualstream.Source{{Type: kind, ID: "*"}},
		dualstream.WithStartEarliest(), dualstream.WithBatching(16), dualstream.WithIncludeData())
	if err != nil {
		t.Fatal(err)
	}
	defer subscription.Close()
	pull, stop := iterPull(subscription)
	defer stop()
	got := next(t, pull, 40)
	if fmt.Sprint(ids(got)) != fmt.Sprint(want) {
		t.Errorf("want %v, got %v", want, ids(got))
	}
	if got[0].Event == nil || got[0].Event.Type != "t" {
		t.Errorf("WithIncludeData should carry the event: %+v", got[0])
	}
	for i := 1; i < len(got); i++ {
		if got[i].Cursor() == got[i-1].Cursor() {
			t.Errorf("notifications %d and %d share a cursor", i-1, i)
		}
	}
}

func TestUnixSocketTarget(t *testing.T) {
	client := connect(t, "DUALSTREAM_TEST_UNIX_TARGET")
	result, err := client.Publish(testContext(t), dualstream.Event{Type: "t", SourceType: sourceType(t), SourceID: "a"})
	if err != nil || result.Offset < 0 {
		t.Fatalf("publish over the unix socket: %+v, %v", result, err)
	}
}

func TestDefaultDeadlineApplies(t *testing.T) {
	client := connect(t, "DUALSTREAM_TEST_TARGET", dualstream.WithTimeout(time.Nanosecond), dualstream.WithRetry(dualstream.NoRetry))
	_, err := client.Publish(context.Background(), dualstream.Event{Type: "t", SourceType: sourceType(t), SourceID: "a"})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("want DEADLINE_EXCEEDED from a 1 ns default deadline, got %v", err)
	}
}

func TestQuickstartRunsAsWritten(t *testing.T) {
	source, err := os.ReadFile("examples/quickstart/main.go")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), string(source)) {
		t.Error("the README's Go quickstart is examples/quickstart/main.go, verbatim")
	}
	// The quickstart targets `make up`'s 127.0.0.1:50051; here the stack's sidecar stands in.
	run := exec.CommandContext(testContext(t), "go", "run", "./examples/quickstart")
	run.Env = append(os.Environ(), "DUALSTREAM_TARGET="+stackVariable(t, "DUALSTREAM_TEST_TARGET"))
	output, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("go run ./examples/quickstart: %v\n%s", err, output)
	}
	lines := strings.Split(strings.TrimSpace(string(output)), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "published ") || !strings.HasPrefix(lines[1], "notified ") {
		t.Fatalf("unexpected output:\n%s", output)
	}
	if strings.Fields(lines[0])[1] != strings.Fields(lines[1])[1] {
		t.Errorf("the notification is not the published event's:\n%s", output)
	}
}
