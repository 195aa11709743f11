"""Generated protobuf and gRPC code for the adaspec.v1 API (scripts/gen_protos.py; do not edit)."""
