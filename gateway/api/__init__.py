"""The gRPC edge: servicers that parse, call a service and convert; one interceptor for auth and errors."""
