// The Go quickstart of the README: subscribe, publish, see the notification arrive.
// Against `make up`: cd clients/go && go run ./examples/quickstart
package main

import (
	"cmp"
	"context"
	"fmt"
	"log"
	"os"

	dualstream "github.com/dualstream/dualstream/clients/go"
)

func main() {
	ctx := context.Background()
	client, err := dualstream.New(cmp.Or(os.Getenv("DUALSTREAM_TARGET"), "127.0.0.1:50051"))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	stream, err := client.Subscribe(ctx, []dualstream.Source{{Type: "user", ID: "octocat"}}) // returns once live
	if err != nil {
		log.Fatal(err)
	}
	defer stream.Close()
	event := dualstream.Event{Type: "user.starred", SourceType: "user", SourceID: "octocat", Data: []byte(`{"repo":"hello"}`)}
	result, err := client.Publish(ctx, event) // retried on UNAVAILABLE with the same id
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("published", result.ID, "to", result.Topic, result.Partition, result.Offset)
	for message, err := range stream.Messages() { // resumes by itself if the stream breaks
		if err != nil {
			log.Fatal(err)
		}
		if n, ok := message.(*dualstream.Notification); ok {
			fmt.Println("notified", n.ID, n.Partition, n.Offset, n.TraceParent)
			return
		}
	}
}
