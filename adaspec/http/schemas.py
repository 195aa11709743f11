"""The OpenAI request and response bodies (pydantic), with AdaSpec's own fields beside OpenAI's.

Requests take OpenAI's fields plus AdaSpec's controls (`policy`, `ttft_ms`, `tpot_ms`) and vLLM's sampling
extensions (`top_k`, `ignore_eos`, `stop_token_ids`), which load generators written for vLLM send. Fields
that OpenAI defines and AdaSpec cannot honour (`n` > 1, `logprobs`, `echo`, penalties, tools, ...) are
refused when set to anything but their default, rather than ignored; unknown fields are ignored, as vLLM
does. Value ranges (temperature >= 0, max_tokens >= 1, ...) are the coordinator's to check: its
INVALID_ARGUMENT names the field, so there is one set of rules.

Responses have OpenAI's shape, and the request's statistics under `adaspec` (OpenAI clients keep unknown keys
as extras: `completion.model_extra["adaspec"]` in the `openai` package).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from adaspec.http.errors import invalid

Stats = dict[str, Any]  # `adaspec.RequestStats` as a dict: acceptance, mean k, TTFT, TPOT, SLO met, request id


class StreamOptions(BaseModel):
    include_usage: bool = False


class GenerationRequest(BaseModel):
    """What completions and chat completions share: sampling, streaming, AdaSpec's controls."""

    model: str | None = None  # None: the served model
    max_tokens: int | None = None  # None: the coordinator's default
    temperature: float | None = None  # None: the coordinator's default (1.0, as OpenAI's)
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # accepted and ignored (OpenAI's end-user id, for its abuse monitoring)
    # vLLM's sampling extensions
    top_k: int | None = None  # 0 or -1 (vLLM's spelling): off
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    # AdaSpec's controls
    policy: str | None = Field(None, description="none | fixed:K (default: the coordinator's)")
    ttft_ms: float | None = Field(None, description="time-to-first-token SLO, ms")
    tpot_ms: float | None = Field(None, description="time-per-output-token SLO, ms")

    def max_tokens_field(self) -> tuple[str, int | None]:
        """(the field that limits the output, its value)."""
        return "max_tokens", self.max_tokens

    def unsupported(self) -> dict[str, bool]:
        """OpenAI fields AdaSpec does not implement: name → whether this request sets it (not to its default)."""
        return {"n": self.n not in (None, 1),
                "presence_penalty": self.presence_penalty not in (None, 0),
                "frequency_penalty": self.frequency_penalty not in (None, 0),
                "logit_bias": bool(self.logit_bias)}

    def check_supported(self) -> None:
        for name, used in self.unsupported().items():
            if used:
                raise invalid(f"{name}: only the default is supported"
                              + (" (n = 1: one choice per request)" if name == "n" else ""), name)

    def sdk_arguments(self) -> dict[str, Any]:
        """Keyword arguments of `AsyncClient.stream` / `generate` (fields left unset stay unset)."""
        return {"max_tokens": self.max_tokens_field()[1], "temperature": self.temperature, "top_p": self.top_p,
                "top_k": 0 if self.top_k in (None, -1) else self.top_k, "seed": self.seed, "stop": self.stop,
                "stop_token_ids": self.stop_token_ids, "ignore_eos": self.ignore_eos, "policy": self.policy,
                "ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms}

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(GenerationRequest):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = 16  # OpenAI's default for completions
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def unsupported(self) -> dict[str, bool]:
        return {**super().unsupported(), "echo": self.echo, "logprobs": self.logprobs is not None,
                "best_of": self.best_of not in (None, 1), "suffix": self.suffix is not None}

    def single_prompt(self) -> str | list[int]:
        """The one prompt: a string, token ids, or a list holding one of them. A batch of several prompts is
        refused: it would need one choice per prompt, each with its own index, usage and statistics."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise invalid(f"prompt: a batch of {len(prompt)} prompts is not supported; send one request per "
                              "prompt", "prompt")
            prompt = prompt[0]
        return prompt


class TextPart(BaseModel):
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self, index: int) -> str:
        """The content as one string: a list of parts must be text parts (AdaSpec's models read text only)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if any(part.type != "text" or part.text is None for part in self.content):
            kinds = sorted({part.type for part in self.content if part.type != "text"}) or ["text without text"]
            raise invalid(f"messages[{index}].content: only text parts are supported, got {', '.join(kinds)}",
                          "messages")
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None  # OpenAI's successor of max_tokens; it wins when both are given
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    def max_tokens_field(self) -> tuple[str, int | None]:
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens

    def unsupported(self) -> dict[str, bool]:
        return {**super().unsupported(), "logprobs": self.logprobs, "top_logprobs": self.top_logprobs is not None,
                "tools": bool(self.tools), "tool_choice": self.tool_choice not in (None, "none", "auto"),
                "response_format": (self.response_format or {}).get("type", "text") != "text"}

    def conversation(self) -> list[dict[str, str]]:
        """The messages as the chat template reads them: role, content as text, and name where given."""
        return [{"role": m.role, "content": m.text(i), **({"name": m.name} if m.name else {})}
                for i, m in enumerate(self.messages)]


# ---------------------------------------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, stats: Stats) -> Usage:
        return cls(prompt_tokens=stats["prompt_tokens"], completion_tokens=stats["output_tokens"],
                   total_tokens=stats["prompt_tokens"] + stats["output_tokens"])


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(BaseModel):
    """A text completion, or one chunk of a streamed one (OpenAI uses one object type for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    adaspec: Stats | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    adaspec: Stats | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: dict[str, str]  # {"role": "assistant", "content": ""} first, then {"content": ...}, {} at the end
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    adaspec: Stats | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "adaspec"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
