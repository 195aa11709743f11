"""What every AdaSpec service runs on: the gRPC host and its security, the engine loop and where the engine
steps, the links that carry sessions, heartbeats, logs, metrics and tracing."""
