"""The gRPC adapter: proto in, domain types through, status codes out. Nothing else imports grpc."""
