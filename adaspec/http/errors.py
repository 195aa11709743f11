"""Errors in OpenAI's JSON shape, `{"error": {"message", "type", "param", "code"}}`, with the HTTP status that
matches the gRPC status (the mapping of `google.rpc.Code`, as grpc-gateway and Google's HTTP APIs use it).

`code` is the gRPC status name in lower case for errors of the coordinator and for requests this server
refuses (`invalid_argument`), OpenAI's own code where OpenAI has one (`invalid_api_key`, `model_not_found`).
`param` is the request's field, in the OpenAI request's names (`max_tokens`, not `params.max_tokens`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from fastapi.responses import JSONResponse

from adaspec.errors import AdaSpecError

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# OpenAI's `type` for each class of status; clients branch on the HTTP status, people read the type.
_ERROR_TYPE = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 409: "invalid_request_error", 429: "rate_limit_error"}


class ApiError(Exception):
    """An error response: HTTP `status`, OpenAI's body fields, and a retry delay (the `Retry-After` header)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after_s: float | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after_s = retry_after_s
        self.extra_headers = dict(headers or {})

    @property
    def type(self) -> str:
        return _ERROR_TYPE.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """`Retry-After` in whole seconds (what HTTP allows) and `retry-after-ms` (what the OpenAI SDKs read
        first, so that they wait the coordinator's delay rather than a rounded one)."""
        headers = dict(self.extra_headers)
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
            headers["retry-after-ms"] = str(max(1, round(self.retry_after_s * 1000)))
        return headers

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())


def invalid(message: str, param: str | None = None) -> ApiError:
    """A request this server refuses before it reaches the coordinator."""
    return ApiError(400, message, param=param, code="invalid_argument")


def from_adaspec(error: AdaSpecError, renames: Mapping[str, str] | None = None) -> ApiError:
    """The HTTP error for an SDK error. The coordinator's field (`params.temperature`, `slo.tpot_ms`) becomes
    the OpenAI field (`temperature`, `tpot_ms`), then `renames` applies the request's own names (`prompt` is
    `messages` in a chat request). RESOURCE_EXHAUSTED that names a field and gives no retry delay is a
    request that can never fit (its KV cache worst case exceeds the replica's), so it is a 400, not a 429
    that clients would retry in vain."""
    status = HTTP_STATUS.get(error.code, 500)
    violations = error.field_violations
    param = openai_field(violations[0][0], renames) if violations else None
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and param is not None and error.retry_delay is None:
        status = 400
    # the violation's description under the OpenAI name ("max_completion_tokens: must be ..."), rather than
    # the coordinator's message, which spells the field its own way ("SamplingParams.max_tokens must be ...")
    message = f"{param}: {violations[0][1]}" if param and violations[0][1] else error.message or error.code.name
    return ApiError(status, message, param=param, code=error.code.name.lower(),
                    retry_after_s=error.retry_delay if status in (429, 503) else None)


def openai_field(field: str, renames: Mapping[str, str] | None = None) -> str | None:
    """`params.max_tokens` → `max_tokens`, `slo.ttft_ms` → `ttft_ms`, `prompt_token_ids` → `prompt`; a bare
    `params` (the parameters as a whole) names no single field."""
    if field == "params":
        return None
    name = field.removeprefix("params.").removeprefix("slo.")
    name = "prompt" if name == "prompt_token_ids" else name
    return (renames or {}).get(name, name)


def from_validation(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """FastAPI's 422 body validation errors as OpenAI's 400. `param` is the top-level field (`messages`), the
    message says where inside it (`messages.0.content`, with pydantic's union member names); a body that is
    not JSON names no field."""
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return invalid(f"the body is not valid JSON: {first.get('msg', '')}")
    message = first.get("msg", "invalid request body")
    return invalid(f"{'.'.join(location)}: {message}" if location else message, location[0] if location else None)
