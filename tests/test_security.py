"""A stack with TLS on every endpoint, mutual TLS between the coordinator and the replicas, and an API key on the
public API (`StackConfig(tls=True, api_key=...)`, certificates from `adaspec certs`): a client with the CA and
the key is served; one without the certificate, without the key or with another key is refused, clearly; a
replica refuses a caller without a client certificate; the key appears in no log."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adaspec import Client
from adaspec.errors import Unauthenticated, Unavailable
from adaspec.service_runtime.transport_security import TlsFiles, channel
from adaspec.stack import Stack, StackConfig
from adaspec.v1 import common_pb2, verify_pb2_grpc

KEY = "sk-test-9f2c41d0e7a5"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    config = StackConfig(tls=True, api_key=KEY, log_dir=str(tmp_path_factory.mktemp("secured-logs")))
    with Stack(config) as stack:
        yield stack
    for process in stack.processes.values():
        assert KEY not in process.log_path.read_text(), f"{process.name} logged the API key"


def test_a_client_with_the_ca_and_the_key_is_served(secured):
    with Client(secured.address, api_key=KEY, tls_ca=secured.tls.ca, max_retries=0, timeout=60) as client:
        completion = client.generate("def f():", max_tokens=8, temperature=0, ignore_eos=True, policy="fixed:2")
        assert len(completion.token_ids) == 8 and completion.stats.draft_tokens > 0  # the replicas over mutual TLS
        assert {r.kind for r in client.cluster_state()} == {"verify", "draft"}


def test_a_client_without_the_certificate_is_refused(secured):
    with Client(secured.address, api_key=KEY, max_retries=0, timeout=10) as plaintext, pytest.raises(Unavailable):
        plaintext.generate("def f():", max_tokens=4)


def test_a_client_without_the_key_or_with_another_is_unauthenticated(secured):
    for key, reason in ((None, "missing the authorization metadata"), ("sk-wrong", "the API key is not valid")):
        with Client(secured.address, api_key=key, tls_ca=secured.tls.ca, max_retries=0, timeout=10) as client:
            with pytest.raises(Unauthenticated, match=reason):
                client.generate("def f():", max_tokens=4)
            with pytest.raises(Unauthenticated):
                client.cluster_state()
    # health checks stay open (probes carry no key)
    with channel(secured.address, TlsFiles(ca=secured.tls.ca), aio=False) as open_channel:
        reply = health_pb2_grpc.HealthStub(open_channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_replica_refuses_a_caller_without_a_client_certificate(secured):
    address = secured.processes["verify-0"].address
    with channel(address, TlsFiles(ca=secured.tls.ca), aio=False) as anonymous:
        with pytest.raises(grpc.RpcError) as refused:
            verify_pb2_grpc.VerifyStub(anonymous).GetLoad(common_pb2.GetLoadRequest(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    with channel(address, secured.tls, aio=False) as coordinators_certificate:
        load = verify_pb2_grpc.VerifyStub(coordinators_certificate).GetLoad(common_pb2.GetLoadRequest(), timeout=5)
        assert load.replica_id == "verify-0"
