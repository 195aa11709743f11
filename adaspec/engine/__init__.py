"""The speculative decoding engine (needs torch and transformers)."""

from adaspec.engine.engine import Engine
from adaspec.engine.kv_cache import KVCacheExhausted

__all__ = ["Engine", "KVCacheExhausted"]
