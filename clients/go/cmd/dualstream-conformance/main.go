// Command dualstream-conformance is the Go client's conformance app: the command-line contract
// of clients/README.md ("The conformance app"), built on the client's public API only, which
// the Python tests drive to kill sidecars under it and to compare languages.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	dualstream "github.com/dualstream/dualstream/clients/go"
)

// The contract asks for at least a minute of retries per event: the tests restart the sidecar
// under a running publisher.
var publishRetry = dualstream.RetryPolicy{
	MaxAttempts: 1 << 20, InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, MaxElapsed: 90 * time.Second,
}

type sources []dualstream.Source

func (s *sources) String() string { return fmt.Sprint(*s) }

func (s *sources) Set(text string) error {
	kind, id, found := strings.Cut(text, ":")
	if !found || kind == "" || id == "" {
		return fmt.Errorf("%q: write a source as TYPE:ID", text)
	}
	*s = append(*s, dualstream.Source{Type: kind, ID: id})
	return nil
}

func main() {
	if len(os.Args) < 2 {
		usage("a command: publish, subscribe or overload")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var err error
	switch os.Args[1] {
	case "publish":
		err = publish(ctx, os.Args[2:])
	case "subscribe":
		err = subscribe(ctx, os.Args[2:])
	case "overload":
		err = overload(ctx, os.Args[2:])
	default:
		usage("publish, subscribe or overload, not " + os.Args[1])
	}
	if err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "dualstream-conformance:", err)
		os.Exit(1)
	}
}

func usage(message string) {
	fmt.Fprintln(os.Stderr, "dualstream-conformance: want", message)
	os.Exit(2)
}

// connection holds the flags both commands share.
type connection struct {
	target, token string
	sources       sources
}

func (c *connection) register(flags *flag.FlagSet, sourceHelp string) {
	flags.StringVar(&c.target, "target", "", "the sidecar: host:port or unix:/path")
	flags.StringVar(&c.token, "token", "", "bearer token")
	flags.Var(&c.sources, "source", sourceHelp)
}

func (c *connection) connect(retry dualstream.RetryPolicy) (*dualstream.Client, error) {
	options := []dualstream.Option{dualstream.WithRetry(retry)}
	if c.token != "" {
		options = append(options, dualstream.WithToken(c.token))
	}
	return dualstream.New(c.target, options...)
}

func publish(ctx context.Context, args []string) error {
	flags := flag.NewFlagSet("publish", flag.ExitOnError)
	var conn connection
	conn.register(flags, "TYPE:ID")
	eventType := flags.String("type", "", "event type")
	count := flags.Int("count", 1, "how many events")
	idPrefix := flags.String("id-prefix", "", "ids are PREFIX-0, PREFIX-1, ...")
	_ = flags.Parse(args)
	source := conn.sources
	if conn.target == "" || len(source) != 1 || *eventType == "" {
		usage("publish --target T --source TYPE:ID --type TYPE [--count N] [--id-prefix P]")
	}
	client, err := conn.connect(publishRetry)
	if err != nil {
		return err
	}
	defer client.Close()
	out := json.NewEncoder(os.Stdout)
	for number := range *count {
		event := dualstream.Event{Type: *eventType, SourceType: source[0].Type, SourceID: source[0].ID}
		if *idPrefix != "" {
			event.ID = fmt.Sprintf("%s-%d", *idPrefix, number)
		}
		result, err := client.Publish(ctx, event)
		if err != nil {
			return err
		}
		if err := out.Encode(map[string]any{
			"id": result.ID, "source_type": event.SourceType, "source_id": event.SourceID,
			"partition": result.Partition, "offset": result.Offset,
		}); err != nil {
			return err
		}
	}
	return nil
}

// overload publishes with many calls in flight, no retry and the default throttle, and counts
// how the calls ended: acknowledged, refused by the sidecar, held back by the client, other.
func overload(ctx context.Context, args []string) error {
	flags := flag.NewFlagSet("overload", flag.ExitOnError)
	var conn connection
	conn.register(flags, "TYPE:ID")
	count := flags.Int("count", 1000, "how many events")
	concurrency := flags.Int("concurrency", 32, "calls in flight")
	_ = flags.Parse(args)
	source := conn.sources
	if conn.target == "" || len(source) != 1 || *count < 1 || *concurrency < 1 {
		usage("overload --target T --source TYPE:ID --count N --concurrency C")
	}
	client, err := conn.connect(dualstream.NoRetry)
	if err != nil {
		return err
	}
	defer client.Close()
	var mutex sync.Mutex
	tally := map[string]any{"kind": "overload", "ok": 0, "refused": 0, "throttled": 0}
	errorCounts := map[string]int{}
	tallyOne := func(key string) {
		mutex.Lock()
		defer mutex.Unlock()
		tally[key] = tally[key].(int) + 1
	}
	numbers := make(chan int)
	var group sync.WaitGroup
	for range *concurrency {
		group.Go(func() {
			for range numbers {
				event := dualstream.Event{Type: "overload", SourceType: source[0].Type, SourceID: source[0].ID}
				_, err := client.Publish(ctx, event)
				var failure *dualstream.Error
				switch {
				case err == nil:
					tallyOne("ok")
				case errors.As(err, &failure) && failure.Throttled:
					tallyOne("throttled")
				case errors.As(err, &failure) && failure.Code == codes.ResourceExhausted && failure.RetryAfter > 0:
					tallyOne("refused")
				default:
					mutex.Lock()
					errorCounts[codeName(status.Code(err))]++
					mutex.Unlock()
				}
			}
		})
	}
	for number := range *count {
		numbers <- number
	}
	close(numbers)
	group.Wait()
	tally["errors"] = errorCounts
	return json.NewEncoder(os.Stdout).Encode(tally)
}

// codeName spells a status code as gRPC's other languages do: RESOURCE_EXHAUSTED, CANCELLED.
func codeName(code codes.Code) string {
	if code == codes.Canceled {
		return "CANCELLED"
	}
	var name strings.Builder
	for i, letter := range code.String() {
		if i > 0 && unicode.IsUpper(letter) {
			name.WriteByte('_')
		}
		name.WriteRune(unicode.ToUpper(letter))
	}
	return name.String()
}

func subscribe(ctx context.Context, args []string) error {
	flags := flag.NewFlagSet("subscribe", flag.ExitOnError)
	var conn connection
	conn.register(flags, "TYPE:ID (repeatable; ID may be *)")
	resume := flags.String("resume", "", "resume after this cursor")
	limit := flags.Int("limit", 0, "exit after this many notifications")
	policy := flags.String("policy", "gap", "gap, replay or close")
	_ = flags.Parse(args)
	policies := map[string]dualstream.Policy{
		"gap": dualstream.PolicyGap, "replay": dualstream.PolicyReplay, "close": dualstream.PolicyClose,
	}
	chosen, known := policies[*policy]
	followed := conn.sources
	if conn.target == "" || len(followed) == 0 || !known {
		usage("subscribe --target T --source TYPE:ID [--resume C] [--limit N] [--policy gap|replay|close]")
	}
	client, err := conn.connect(dualstream.DefaultRetry)
	if err != nil {
		return err
	}
	defer client.Close()
	options := []dualstream.SubscribeOption{dualstream.WithPolicy(chosen), dualstream.WithAutoResume(true)}
	if *resume != "" {
		options = append(options, dualstream.WithResumeCursor(*resume))
	}
	subscription, err := client.Subscribe(ctx, followed, options...)
	if err != nil {
		return err
	}
	defer subscription.Close()
	out := json.NewEncoder(os.Stdout)
	if err := out.Encode(map[string]any{"kind": "subscribed", "cursor": subscription.Cursor()}); err != nil {
		return err
	}
	seen := 0
	for message, err := range subscription.Messages() {
		if err != nil {
			if errors.Is(err, context.Canceled) && ctx.Err() != nil {
				return nil // SIGTERM: a normal end.
			}
			return err
		}
		if err := out.Encode(describe(message)); err != nil {
			return err
		}
		if _, ok := message.(*dualstream.Notification); ok {
			seen++
			if *limit > 0 && seen >= *limit {
				return nil
			}
		}
	}
	return nil
}

func describe(message dualstream.Message) map[string]any {
	switch m := message.(type) {
	case *dualstream.Notification:
		return map[string]any{
			"kind": "notification", "id": m.ID, "source_type": m.SourceType, "source_id": m.SourceID,
			"partition": m.Partition, "offset": m.Offset, "cursor": m.Cursor(), "replayed": m.Replayed,
			"traceparent": m.TraceParent,
		}
	case *dualstream.Gap:
		return map[string]any{"kind": "gap", "reason": string(m.Reason), "missed": m.Missed, "cursor": m.Cursor()}
	case *dualstream.CaughtUp:
		return map[string]any{"kind": "caught_up", "replayed": m.Replayed, "cursor": m.Cursor()}
	}
	return map[string]any{"kind": "unknown"}
}
