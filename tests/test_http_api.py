"""The OpenAI-compatible HTTP API, with the real `openai` client against a real stack (bundled models,
in-process load store) that runs the HTTP process, and a second HTTP process in front of the same coordinator
with an API key and a short request timeout. Nothing is mocked.

The verify replica takes one session and queues one (`--max-num-seqs 1 --max-waiting 1`, as in
`test_services_small.py`), so that two held requests fill it and the next one is refused (429).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from openai import OpenAI
from transformers import AutoTokenizer

from adaspec import AsyncClient, Client
from adaspec.errors import bad_request, error_for
from adaspec.http.errors import from_adaspec
from adaspec.http.readiness import wait_until_healthy
from adaspec.stack import Stack, StackConfig
from tests.test_http_chat_template import MESSAGES, write_templated_tokenizer
from tests.test_services import replica_load, wait_for_baseline

MODEL = "tiny-target"  # the bundled target's directory name: the default served model name
PROMPT = "def fib(n):"
KEY = "test-key-0123"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    config = StackConfig(http=True, verify_args=["--max-num-seqs", "1", "--max-waiting", "1"],
                         log_dir=str(tmp_path_factory.mktemp("http-logs")))
    with Stack(config) as stack:
        yield stack
    assert set(stack.exit_codes().values()) == {0}, f"graceful SIGTERM exit expected:\n{stack.exit_report()}"


@pytest.fixture(scope="module")
def client(stack):
    with OpenAI(base_url=f"{stack.http_url}/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def sdk(stack):
    with Client(stack.address) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def templated_tokenizer(tmp_path_factory) -> Path:
    return write_templated_tokenizer(tmp_path_factory.mktemp("templated") / "tokenizer")


@pytest.fixture(scope="module")
def guarded(stack, templated_tokenizer, tmp_path_factory):
    """A second HTTP process on the same coordinator: an API key from $ADASPEC_API_KEY, a 1 s request timeout,
    and a tokenizer with a chat template (the bundled one with `TEMPLATE`)."""
    logs = tmp_path_factory.mktemp("guarded")
    log_path, port_file = logs / "http.log", logs / "http.port"
    command = [sys.executable, "-m", "adaspec.cli", "serve", "http", "--coordinator", stack.address, "--port", "0",
               "--port-file", str(port_file), "--request-timeout", "1", "--tokenizer", str(templated_tokenizer),
               "--served-model-name", MODEL]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "ADASPEC_API_KEY": KEY})
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        url = f"http://{port_file.read_text()}"
        asyncio.run(wait_until_healthy(f"{url}/health", 60))
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, log_path.read_text()
    assert KEY not in log_path.read_text()


def stats_of(response) -> dict:
    return response.model_extra["adaspec"]


def test_models_and_health(client, stack):
    assert [m.id for m in client.models.list().data] == [MODEL]
    health = httpx.get(f"{stack.http_url}/health")
    assert health.status_code == 200 and health.json()["coordinator"] == stack.address


def test_greedy_completion_is_the_grpc_paths(client, sdk):
    expected = sdk.generate(PROMPT, max_tokens=16, temperature=0)
    response = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0)
    choice = response.choices[0]
    assert choice.text == expected.text and choice.finish_reason == expected.finish_reason == "length"
    assert response.object == "text_completion" and response.model == MODEL
    assert response.usage.prompt_tokens == expected.stats.prompt_tokens
    assert response.usage.completion_tokens == len(expected.token_ids) == 16
    assert response.usage.total_tokens == response.usage.prompt_tokens + 16
    stats = stats_of(response)
    assert response.id == f"cmpl-{stats['request_id']}" and stats["output_tokens"] == 16
    assert {"acceptance_rate", "mean_k", "ttft_ms", "tpot_ms", "slo_met", "policy"} <= stats.keys()


def test_token_ids_and_a_list_of_one_prompt(client, sdk):
    ids = [452, 286, 828]
    expected = sdk.generate(ids, max_tokens=8, temperature=0)
    for prompt in (ids, [ids]):
        response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
        assert response.choices[0].text == expected.text and response.usage.prompt_tokens == len(ids)
    listed = client.completions.create(model=MODEL, prompt=[PROMPT], max_tokens=8, temperature=0)
    assert listed.choices[0].text == sdk.generate(PROMPT, max_tokens=8, temperature=0).text


def test_streamed_completion_with_usage(client, sdk):
    expected = sdk.generate(PROMPT, max_tokens=12, temperature=0)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text
    *_, finish, usage = chunks
    assert finish.choices[0].finish_reason == "length" and stats_of(finish)["output_tokens"] == 12
    assert usage.choices == [] and usage.usage.completion_tokens == 12
    assert usage.usage.prompt_tokens == expected.stats.prompt_tokens
    assert len({c.id for c in chunks}) == 1


def test_chat_uses_the_plain_template(client, sdk):
    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def add(a, b):"}]
    expected = sdk.generate("system: You write Python.\nuser: def add(a, b):\nassistant: ", max_tokens=10,
                            temperature=0)
    response = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=10, temperature=0)
    message = response.choices[0].message
    assert message.role == "assistant" and message.content == expected.text
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (expected.stats.prompt_tokens, 10)

    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 10


def test_adaspec_fields_reach_the_coordinator(client):
    response = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0,
                                         extra_body={"policy": "fixed:2", "tpot_ms": 0.001, "ignore_eos": True})
    stats = stats_of(response)
    assert stats["policy"] == "fixed:2" and stats["slo_met"] is False and stats["mean_k"] <= 2
    plain = stats_of(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0,
                                               extra_body={"policy": "none", "ttft_ms": 1e6, "tpot_ms": 1e6}))
    assert plain["policy"] == "none" and plain["slo_met"] is True and plain["draft_tokens"] == 0


@pytest.mark.parametrize("chat, fields, status, param", [
    (False, {"temperature": -1}, 400, "temperature"),
    (False, {"extra_body": {"temperature": "hot"}}, 400, "temperature"),
    (False, {"max_tokens": 0}, 400, "max_tokens"),
    (False, {"n": 2}, 400, "n"),
    (False, {"extra_body": {"policy": "fixed:99"}}, 400, "policy"),
    (False, {"extra_body": {"policy": "bogus"}, "stream": True}, 400, "policy"),  # refused before streaming
    (False, {"extra_body": {"tpot_ms": -5}}, 400, "tpot_ms"),
    (False, {"prompt": ["def f():", "def g():"]}, 400, "prompt"),
    (False, {"model": "gpt-4o"}, 404, "model"),
    (True, {"max_completion_tokens": 0}, 400, "max_completion_tokens"),
    (True, {"messages": []}, 400, "messages"),
])
def test_errors_name_the_openai_field(client, chat, fields, status, param):
    request = {"model": MODEL, "max_tokens": 4, **fields}
    with pytest.raises(openai.APIStatusError) as caught:
        if chat:
            client.chat.completions.create(**{"messages": [{"role": "user", "content": "hi"}], **request})
        else:
            client.completions.create(**{"prompt": PROMPT, **request})
    error = caught.value
    assert (error.status_code, error.param) == (status, param), error.body
    assert error.body["type"] == ("invalid_request_error") and error.body["message"]


def test_a_full_replica_answers_429_with_retry_after(client, stack):
    async def hold_the_replica_then_ask():
        async with AsyncClient(stack.address, max_retries=0) as sdk:
            async def hold():
                async for _ in sdk.stream("def f():", max_tokens=1500, temperature=0, ignore_eos=True, policy="none"):
                    pass

            holders = [asyncio.create_task(hold()) for _ in range(2)]
            try:
                deadline = time.monotonic() + 30
                while replica_load(stack, "verify-0").sessions < 2:
                    assert time.monotonic() < deadline, "the two holding requests were never admitted"
                    await asyncio.sleep(0.05)
                with pytest.raises(openai.RateLimitError) as caught:
                    await asyncio.to_thread(client.completions.create, model=MODEL, prompt=PROMPT, max_tokens=4)
            finally:
                for task in holders:
                    task.cancel()
                await asyncio.gather(*holders, return_exceptions=True)
            return caught.value

    error = asyncio.run(hold_the_replica_then_ask())
    assert error.status_code == 429 and error.body["code"] == "resource_exhausted"
    assert int(error.response.headers["Retry-After"]) >= 1 and int(error.response.headers["retry-after-ms"]) > 0


def baseline(stack) -> dict[str, int]:
    return {name: replica_load(stack, name).total_kv_blocks for name in ("verify-0", "draft-0")}


def test_a_client_leaving_mid_stream_cancels_the_request(client, stack):
    blocks = baseline(stack)
    stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1500, stream=True,
                                       extra_body={"ignore_eos": True})
    next(iter(stream))
    assert replica_load(stack, "verify-0").sessions == 1
    stream.close()
    wait_for_baseline(stack, blocks, timeout_s=3)
    assert "client left mid-stream; request cancelled" in stack.processes["http"].log_path.read_text()


def test_a_client_leaving_before_a_whole_completion_cancels_the_request(client, stack):
    blocks = baseline(stack)
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.5).completions.create(model=MODEL, prompt=PROMPT, max_tokens=1500,
                                                            extra_body={"ignore_eos": True})
    wait_for_baseline(stack, blocks, timeout_s=3)
    deadline = time.monotonic() + 5
    while "client left; request cancelled" not in stack.processes["http"].log_path.read_text():
        assert time.monotonic() < deadline, "the HTTP process did not see the client leave"
        time.sleep(0.05)


def test_an_api_key_is_required_when_configured(guarded):
    assert httpx.get(f"{guarded}/health").status_code == 200  # probes need no key
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        answer = httpx.get(f"{guarded}/v1/models", headers=headers)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key", headers
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    with OpenAI(base_url=f"{guarded}/v1", api_key="wrong", max_retries=0) as wrong, \
            pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    with OpenAI(base_url=f"{guarded}/v1", api_key=KEY, max_retries=0) as right:
        assert right.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2


def test_chat_with_the_tokenizers_template_sends_its_token_ids(guarded, templated_tokenizer, sdk):
    ids = AutoTokenizer.from_pretrained(templated_tokenizer).apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    expected = sdk.generate(list(ids), max_tokens=8, temperature=0)
    with OpenAI(base_url=f"{guarded}/v1", api_key=KEY, max_retries=0) as client:
        response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0)
    assert response.choices[0].message.content == expected.text
    assert response.usage.prompt_tokens == len(ids) == expected.stats.prompt_tokens


def test_the_request_timeout_is_a_504_or_an_error_event_once_streaming(guarded, stack):
    with OpenAI(base_url=f"{guarded}/v1", api_key=KEY, max_retries=0) as client:
        long = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1500, "extra_body": {"ignore_eos": True}}
        with pytest.raises(openai.APIStatusError) as caught:
            client.completions.create(**long)
        assert caught.value.status_code == 504 and caught.value.body["code"] == "deadline_exceeded"
        stream = client.completions.create(**long, stream=True)
        assert next(iter(stream)).choices[0].text  # streaming started: the error can only be an event now
        with pytest.raises(openai.APIError) as caught:
            for _ in stream:
                pass
        assert caught.value.body["code"] == "deadline_exceeded" and caught.value.body["type"] == "server_error"
    wait_for_baseline(stack, baseline(stack))


@pytest.mark.parametrize("code, field, retry_after_s, status, param, retry_after", [
    (grpc.StatusCode.INVALID_ARGUMENT, "params.top_p", None, 400, "top_p", None),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, None, 0.25, 429, None, "1"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "params.max_tokens", None, 400, "max_tokens", None),  # can never fit
    (grpc.StatusCode.UNAVAILABLE, None, 2.5, 503, None, "3"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, None, None, 504, None, None),
    (grpc.StatusCode.INTERNAL, None, None, 500, None, None),
])
def test_error_mapping(code, field, retry_after_s, status, param, retry_after):
    """The statuses a live stack cannot be made to give on demand, mapped as the live ones are."""
    details = [bad_request([(field, "is wrong")])] if field else []
    if retry_after_s is not None:
        details.append(error_details_pb2.RetryInfo(retry_delay=Duration(nanos=int(retry_after_s % 1 * 1e9),
                                                                        seconds=int(retry_after_s))))
    api_error = from_adaspec(error_for(code, "why", details))
    assert (api_error.status, api_error.param) == (status, param)
    assert api_error.headers().get("Retry-After") == retry_after
    assert api_error.body()["error"]["code"] == code.name.lower()
