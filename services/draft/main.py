"""`adaspec serve draft`: one draft replica (what a draft container runs).

Arguments are declared without importing torch (the CLI builds every parser); the model loads on start.
"""

from __future__ import annotations

import argparse

from adaspec.service_runtime.replica import add_replica_args, run_replica


def add_args(parser: argparse.ArgumentParser) -> None:
    add_replica_args(parser, default_port=50071, kind="draft")
    parser.add_argument("--draft", help="draft checkpoint directory (default: the bundled tiny-draft)")
    parser.add_argument("--max-sessions", type=int, default=256)


def build(args, address: str):
    from adaspec.services.draft.draft_target import DraftTarget
    from adaspec.services.draft.service import DraftService

    from adaspec.service_runtime.replica import start_engine_core

    engine_args = dict(draft=args.draft, device=args.device, max_spec_len=args.max_spec_len, profile=args.profile,
                       kv_cache_memory=args.kv_cache_mb * 2**20 if args.kv_cache_mb else None,
                       cuda_graphs=args.cuda_graphs)
    core = start_engine_core(args, "draft", DraftTarget.build, engine_args)
    return DraftService(core, args.replica_id, address, max_sessions=args.max_sessions)


def main(args) -> None:
    from adaspec.services.draft.service import SERVICE_NAME

    from adaspec.v1 import draft_pb2_grpc

    run_replica(args, "draft", SERVICE_NAME, build, draft_pb2_grpc.add_DraftServicer_to_server)
