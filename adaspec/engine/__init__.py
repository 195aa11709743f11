"""The speculative decoding engine (needs torch and transformers, imported on first use)."""

__all__ = ["Engine", "KVCacheExhausted"]


def __getattr__(name: str):
    if name == "Engine":
        from adaspec.engine.engine import Engine

        return Engine
    if name == "KVCacheExhausted":
        from adaspec.engine.kv_cache import KVCacheExhausted

        return KVCacheExhausted
    raise AttributeError(f"module 'adaspec.engine' has no attribute {name!r}")
