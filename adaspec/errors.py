"""Typed errors over gRPC's rich error model (google.rpc.Status with details), for both ends.

Client side: `from_rpc_error` turns a `grpc.RpcError` (sync or `grpc.aio`) into an `AdaSpecError` subclass that
carries the status code, message and decoded details (`google.rpc.BadRequest` field violations,
`google.rpc.RetryInfo` retry delay, ...).

Server side: `rich_status` builds a `grpc.Status` with those details, `abort` ends a `grpc.aio` call with it, and
`invalid_argument_from` maps a `ValueError` (e.g. from `adaspec.SamplingParams`) onto a field violation.

Pure Python on top of grpcio, grpcio-status and googleapis-common-protos: no torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "AdaSpecError",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "abort",
    "bad_request",
    "error_for",
    "from_rpc_error",
    "invalid_argument_from",
    "rich_status",
    "rich_status_of",
]

# The google.rpc detail messages we decode; anything else stays a packed `Any`.
_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.ErrorInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RequestInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)
_CODE_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


# --------------------------------------------------------------------------------------------- client side


class AdaSpecError(Exception):
    """An RPC to AdaSpec failed. `code` is the `grpc.StatusCode`, `message` the status message, `details` the
    decoded `google.rpc` detail messages (`BadRequest`, `RetryInfo`, `ErrorInfo`, ...; unknown ones as `Any`)."""

    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str = "", *, code: grpc.StatusCode | None = None,
                 details: Sequence[Message] = ()) -> None:
        self.code: grpc.StatusCode = code if code is not None else self.default_code
        self.message: str = message
        self.details: list[Message] = list(details)
        super().__init__(message)

    @property
    def field_violations(self) -> list[tuple[str, str]]:
        """(field, description) of every `google.rpc.BadRequest` field violation."""
        return [(v.field, v.description) for d in self.details if isinstance(d, error_details_pb2.BadRequest)
                for v in d.field_violations]

    @property
    def retry_delay(self) -> float | None:
        """Seconds the server asked to wait before retrying (`google.rpc.RetryInfo`), or None."""
        for d in self.details:
            if isinstance(d, error_details_pb2.RetryInfo) and d.HasField("retry_delay"):
                return d.retry_delay.seconds + d.retry_delay.nanos / 1e9
        return None

    @property
    def error_info(self) -> error_details_pb2.ErrorInfo | None:
        return next((d for d in self.details if isinstance(d, error_details_pb2.ErrorInfo)), None)

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}" if self.message else self.code.name
        violations = self.field_violations
        if violations:
            text += " [" + "; ".join(f"{f}: {d}" if d else f for f, d in violations) + "]"
        if self.retry_delay is not None:
            text += f" (retry after {self.retry_delay:g} s)"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __reduce__(self):  # keyword-only constructor: pickle explicitly (multiprocessing, concurrent.futures)
        return (_rebuild, (type(self), self.message, self.code.name,
                           [_pack(d) for d in self.details]), self.__dict__.copy())


class InvalidArgument(AdaSpecError):
    default_code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(AdaSpecError):
    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(AdaSpecError):
    default_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(AdaSpecError):
    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(AdaSpecError):
    default_code = grpc.StatusCode.CANCELLED


class NotFound(AdaSpecError):
    default_code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(AdaSpecError):
    default_code = grpc.StatusCode.FAILED_PRECONDITION


class Internal(AdaSpecError):
    default_code = grpc.StatusCode.INTERNAL


class Unauthenticated(AdaSpecError):
    """No API key, or not the service's (the client's `api_key`, or `$ADASPEC_API_KEY`)."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


_ERROR_BY_CODE: dict[grpc.StatusCode, type[AdaSpecError]] = {
    cls.default_code: cls
    for cls in (InvalidArgument, ResourceExhausted, Unavailable, DeadlineExceeded, Cancelled, NotFound,
                FailedPrecondition, Internal, Unauthenticated)
}


def error_for(code: grpc.StatusCode, message: str = "", details: Sequence[Message] = ()) -> AdaSpecError:
    """The `AdaSpecError` subclass for `code` (AdaSpecError itself for codes without one)."""
    return _ERROR_BY_CODE.get(code, AdaSpecError)(message, code=code, details=details)


def from_rpc_error(error: grpc.RpcError) -> AdaSpecError:
    """The typed error for a failed call (`grpc.RpcError` from a sync call or `grpc.aio.AioRpcError`).

    Uses the rich status (`grpc-status-details-bin` trailer) when the server sent one, else the call's code
    and details. The caller should `raise from_rpc_error(e) from e` to keep the original as the cause."""
    code = _call(error, "code")
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = _call(error, "details") or ""
    status = rich_status_of(error)
    if status is None:
        return error_for(code, message)
    if status.code != code_pb2.OK:
        code = _CODE_BY_VALUE.get(status.code, code)
    return error_for(code, status.message or message, [_unpack(d) for d in status.details])


def _call(error: object, name: str) -> Any:
    method = getattr(error, name, None)
    if not callable(method):
        return None
    try:
        return method()
    except Exception:  # noqa: BLE001 - a half-built RpcError must not hide the original failure
        return None


def rich_status_of(error: grpc.RpcError) -> status_pb2.Status | None:
    """The `google.rpc.Status` a failed call carried in its `grpc-status-details-bin` trailer, or None."""
    try:  # grpcio-status's reference parser; it insists that code and message agree with the call's
        return rpc_status.from_call(error)
    except (ValueError, DecodeError, AttributeError, TypeError):
        pass
    for key, value in _call(error, "trailing_metadata") or ():  # tolerant fallback
        if key == rpc_status.GRPC_DETAILS_METADATA_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def _unpack(packed: any_pb2.Any) -> Message:
    for cls in _DETAIL_TYPES:
        if packed.Is(cls.DESCRIPTOR):
            message = cls()
            if packed.Unpack(message):
                return message
    return packed


def _pack(message: Message) -> any_pb2.Any:
    if isinstance(message, any_pb2.Any):
        return message
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _rebuild(cls: type[AdaSpecError], message: str, code_name: str, packed: list[any_pb2.Any]) -> AdaSpecError:
    return cls(message, code=grpc.StatusCode[code_name], details=[_unpack(p) for p in packed])


# --------------------------------------------------------------------------------------------- server side


def rich_status(code: grpc.StatusCode, message: str, *, field: str | None = None, description: str | None = None,
                retry_after_s: float | None = None,
                violations: Iterable[tuple[str, str]] = ()) -> grpc.Status:
    """A `grpc.Status` carrying a `google.rpc.Status` with details: a `BadRequest` with the violation of
    `field` (its description defaults to `message`) plus any extra `violations` (field, description), and a
    `RetryInfo` when `retry_after_s` is given. Pass it to `context.abort_with_status`."""
    if code == grpc.StatusCode.OK:
        raise ValueError("rich_status: an error status needs a code other than OK")
    status = status_pb2.Status(code=code.value[0], message=message)
    field_violations = [(field, description if description is not None else message)] if field else []
    field_violations += list(violations)
    if field_violations:
        status.details.add().Pack(bad_request(field_violations))
    if retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(0, round(retry_after_s * 1e9)))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return rpc_status.to_status(status)


def bad_request(violations: Iterable[tuple[str, str]]) -> error_details_pb2.BadRequest:
    """A `google.rpc.BadRequest` with one violation per (field, description)."""
    return error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations])


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, **kw: Any) -> NoReturn:
    """End the current `grpc.aio` call with `rich_status(code, message, **kw)`. Never returns."""
    await context.abort_with_status(rich_status(code, message, **kw))
    raise AssertionError("unreachable: abort_with_status returned")  # pragma: no cover


_SAMPLING_FIELDS = ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop_token_ids", "stop",
                    "ignore_eos")
_QUALIFIED = re.compile(r"\b(?:SamplingParams|params)\.(" + "|".join(_SAMPLING_FIELDS) + r")\b")
_LEADING = re.compile(r"^(" + "|".join(_SAMPLING_FIELDS) + r")\b")


def invalid_argument_from(error: ValueError, default_field: str) -> grpc.Status:
    """INVALID_ARGUMENT for a rejected request, with one field violation: `params.<field>` when the message
    names a SamplingParams field ("SamplingParams.top_p must be ...", "params.seed ...", or starting with
    the bare field name), else `default_field`. The description is the message without the field prefix."""
    message = str(error)
    match = _QUALIFIED.search(message) or _LEADING.match(message)
    if match is None:
        return rich_status(grpc.StatusCode.INVALID_ARGUMENT, message, field=default_field)
    description = message[match.end():].strip() if match.start() == 0 else message
    return rich_status(grpc.StatusCode.INVALID_ARGUMENT, message, field=f"params.{match.group(1)}",
                       description=description or message)
