"""What every AdaSpec gRPC service shares: the engine loop, server setup, conversions, logs."""
