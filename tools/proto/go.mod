// The Go code generators of `make proto`, pinned (with their checksums in go.sum). This module
// only records tool versions: scripts/proto-tools.sh runs `go install tool` from here.
module github.com/dualstream/dualstream/tools/proto

go 1.25.0

tool (
	google.golang.org/grpc/cmd/protoc-gen-go-grpc
	google.golang.org/protobuf/cmd/protoc-gen-go
)

require (
	google.golang.org/grpc/cmd/protoc-gen-go-grpc v1.6.2 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)
