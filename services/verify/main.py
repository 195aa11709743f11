"""`adaspec serve verify`: one verify replica (what a verify container runs).

Arguments are declared without importing torch (the CLI builds every parser); the model loads on start.
"""

from __future__ import annotations

import argparse

from adaspec.service_runtime.replica import add_replica_args, run_replica


def add_args(parser: argparse.ArgumentParser) -> None:
    add_replica_args(parser, default_port=50061, kind="verify")
    parser.add_argument("--target", help="target checkpoint directory (default: the bundled tiny-target)")
    parser.add_argument("--pool", default="default", help="verify pool this replica belongs to")
    parser.add_argument("--max-num-seqs", type=int, default=64, help="sessions batched together")
    parser.add_argument("--max-waiting", type=int, default=64, help="sessions queued beyond that")
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048,
                        help="the most tokens one engine step carries; prompt chunks also keep every decoding "
                             "session's TPOT SLO (docs/adaptive-speculation.md)")


def build(args, address: str):
    from adaspec.services.verify.service import VerifyService
    from adaspec.services.verify.verify_target import VerifyTarget
    from transformers import AutoTokenizer

    from adaspec.service_runtime.replica import start_engine_core

    engine_args = dict(
        target=args.target, device=args.device, kv_cache_memory=args.kv_cache_mb * 2**20 if args.kv_cache_mb else None,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        max_spec_len=args.max_spec_len, seed=0, profile=args.profile, cuda_graphs=args.cuda_graphs,
    )
    core = start_engine_core(args, "verify", VerifyTarget.build, engine_args)
    tokenizer = AutoTokenizer.from_pretrained(core.info["tokenizer_path"])
    return VerifyService(core, tokenizer, args.replica_id, args.pool, address, max_waiting=args.max_waiting)


def main(args) -> None:
    from adaspec.services.verify.service import SERVICE_NAME

    from adaspec.v1 import verify_pb2_grpc

    run_replica(args, "verify", SERVICE_NAME, build, verify_pb2_grpc.add_VerifyServicer_to_server)
