"""The OpenAI-compatible HTTP API in front of the coordinator (`adaspec serve http`).

A FastAPI app (`app.create_app`) that turns `/v1/completions` and `/v1/chat/completions` into calls of the
project's own async SDK, so that clients, gateways and harnesses written for the OpenAI API (as vLLM, SGLang
and TensorRT-LLM serve it) work unchanged. The process loads the target's tokenizer files only: no model, no
torch.
"""
