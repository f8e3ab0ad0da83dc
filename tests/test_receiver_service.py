"""The receiver service over real gRPC: bad input, fallbacks and their statuses, disconnects,
start-up checks against the sharer, health and reflection."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos import c2c_pb2
from tests.service_harness import (
    ProxySharer,
    receiver_stub,
    save_random_fuser,
    sharer_stub,
    start_proxy,
    start_receiver,
    start_sharer,
)
from tests.tiny_models import TinyPair

PROMPT = "The red cat sleeps. Say the animal and its color:"


@pytest.fixture(scope="module")
def fuser_dir(tiny_pair_dirs: TinyPair, tmp_path_factory) -> Path:
    return save_random_fuser(
        tiny_pair_dirs.receiver, tiny_pair_dirs.llama_sharer, tmp_path_factory.mktemp("fuser")
    )


@pytest.fixture(scope="module")
def sharer(tiny_pair_dirs: TinyPair):
    server = start_sharer(tiny_pair_dirs.llama_sharer)
    yield server
    server.stop(0)


@pytest.fixture(scope="module")
def receiver(tiny_pair_dirs: TinyPair, fuser_dir: Path, sharer):
    server = start_receiver(
        tiny_pair_dirs.receiver, fuser_dir, sharer.port, max_new_tokens=64, max_prompt_tokens=300
    )
    yield server
    server.stop(0)


def generate(port: int, **fields) -> c2c_pb2.GenerateReply:
    fields.setdefault("max_new_tokens", 6)
    return receiver_stub(port).Generate(c2c_pb2.GenerateRequest(**fields), timeout=60)


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


# -- bad input ------------------------------------------------------------------------------------

USER = c2c_pb2.ChatMessage(role="user", content="Which animal is red?")
BAD_REQUESTS = {
    "empty prompt": (dict(prompt="   "), "prompt"),
    "neither prompt nor messages": (dict(), "prompt, messages"),
    "no messages": (dict(messages=c2c_pb2.ChatMessages()), "messages"),
    "unknown role": (
        dict(
            messages=c2c_pb2.ChatMessages(
                messages=[c2c_pb2.ChatMessage(role="wizard", content="hi")]
            )
        ),
        "messages[0].role",
    ),
    "max_new_tokens over the limit": (dict(prompt=PROMPT, max_new_tokens=65), "max_new_tokens"),
    "prompt over the limit": (dict(prompt="cat " * 400), "prompt"),
    "unknown mode": (dict(prompt=PROMPT, mode=9), "mode"),
    "unknown codec": (dict(prompt=PROMPT, codec=9), "codec"),
    "negative temperature": (dict(prompt=PROMPT, temperature=-0.5), "temperature"),
    "top_p above 1": (dict(prompt=PROMPT, top_p=1.5), "top_p"),
    "negative top_p": (dict(prompt=PROMPT, top_p=-0.1), "top_p"),
    "empty stop string": (dict(prompt=PROMPT, stop=["ok", ""]), "stop[1]"),
    "identity alignment across tokenizers": (
        dict(prompt=PROMPT, alignment=c2c_pb2.ALIGNMENT_IDENTITY),
        "alignment",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_request_is_invalid_argument_naming_the_field(receiver, name: str) -> None:
    fields, field_name = BAD_REQUESTS[name]
    error = rpc_error(generate, receiver.port, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(field_name + ":"), error.details()
    assert "Traceback" not in error.details()


def test_request_with_both_prompt_and_messages_is_refused(receiver) -> None:
    both = (
        c2c_pb2.GenerateRequest(prompt=PROMPT).SerializeToString()
        + c2c_pb2.GenerateRequest(
            messages=c2c_pb2.ChatMessages(messages=[USER])
        ).SerializeToString()
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{receiver.port}")
    raw_generate = channel.unary_unary(
        "/c2c.v1.Receiver/Generate", response_deserializer=c2c_pb2.GenerateReply.FromString
    )
    error = rpc_error(raw_generate, both, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt, messages" in error.details() and "both" in error.details()


def test_stream_reports_bad_input_as_a_status_not_a_traceback(receiver) -> None:
    stream = receiver_stub(receiver.port).GenerateStream(
        c2c_pb2.GenerateRequest(prompt=PROMPT, top_p=2.0), timeout=30
    )
    error = rpc_error(list, stream)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("top_p:")


# -- answers --------------------------------------------------------------------------------------


def test_stream_deltas_add_up_to_the_reply(receiver) -> None:
    events = list(
        receiver_stub(receiver.port).GenerateStream(
            c2c_pb2.GenerateRequest(
                messages=c2c_pb2.ChatMessages(messages=[USER]), max_new_tokens=6
            ),
            timeout=60,
        )
    )
    *deltas, last = events
    assert last.HasField("reply") and all(event.HasField("delta") for event in deltas)
    assert "".join(event.delta.text for event in deltas) == last.reply.text
    delta_ids = [token for event in deltas for token in event.delta.token_ids]
    assert delta_ids == list(last.reply.token_ids)
    assert last.reply.mode_used == c2c_pb2.MODE_C2C


def test_text_mode_reads_the_sharer_answer(receiver) -> None:
    reply = generate(receiver.port, prompt=PROMPT, mode=c2c_pb2.MODE_TEXT)
    own = generate(receiver.port, prompt=PROMPT, mode=c2c_pb2.MODE_RECEIVER_ONLY)
    assert reply.mode_used == c2c_pb2.MODE_TEXT
    assert reply.bytes_on_wire > 0 and reply.timings.transfer > 0
    assert reply.prompt_tokens > own.prompt_tokens  # the sharer's notes were prepended


def test_stop_string_ends_generation_before_it(receiver) -> None:
    free = generate(receiver.port, prompt=PROMPT, mode=c2c_pb2.MODE_RECEIVER_ONLY)
    assert len(free.text) > 1
    stop = free.text[1:3] if len(free.text) > 2 else free.text[1:]
    reply = generate(receiver.port, prompt=PROMPT, mode=c2c_pb2.MODE_RECEIVER_ONLY, stop=[stop])
    assert reply.finish_reason == "stop"
    assert reply.text == free.text[: free.text.index(stop)]


def test_sampling_is_reproducible_by_seed_and_a_tiny_nucleus_is_greedy(receiver) -> None:
    def sample(**fields) -> list[int]:
        reply = generate(receiver.port, prompt=PROMPT, max_new_tokens=12, **fields)
        return list(reply.token_ids)

    hot = dict(temperature=5.0, seed=11)
    assert sample(**hot) == sample(**hot)
    assert sample(**hot) != sample(temperature=5.0, seed=12)
    assert sample(temperature=5.0, top_p=1e-6, seed=3) == sample()


def test_one_token_prompt_has_nothing_to_fuse_and_says_so(receiver) -> None:
    tokenizer = receiver.pipeline.receiver.tokenizer
    word = next(w for w in ("cat", "owl", "a") if len(tokenizer(w).input_ids) == 1)
    reply = generate(receiver.port, prompt=word)
    assert reply.mode_used == c2c_pb2.MODE_RECEIVER_ONLY
    assert "nothing to fuse" in reply.fallback_reason and reply.prompt_tokens == 1


def test_describe_reports_the_pair_and_c2c_ready(receiver, sharer) -> None:
    card = receiver_stub(receiver.port).Describe(c2c_pb2.DescribeRequest())
    assert card.c2c_ready and not card.c2c_unready_reason
    assert card.sharer.model_fingerprint == sharer.prefill.loaded.card.model_fingerprint
    assert card.receiver.architecture == "Qwen3ForCausalLM"
    assert card.max_new_tokens_limit == 64 and len(card.fuser_fingerprint) == 32


# -- sharer failures ------------------------------------------------------------------------------


def receiver_only_ids(port: int) -> list[int]:
    return list(generate(port, prompt=PROMPT, mode=c2c_pb2.MODE_RECEIVER_ONLY).token_ids)


def test_sharer_down_is_unavailable_or_a_receiver_only_fallback(
    tiny_pair_dirs: TinyPair, fuser_dir: Path
) -> None:
    sharer = start_sharer(tiny_pair_dirs.llama_sharer)
    receiver = start_receiver(tiny_pair_dirs.receiver, fuser_dir, sharer.port)
    try:
        sharer.stop(0)
        error = rpc_error(generate, receiver.port, prompt=PROMPT)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "sharer" in error.details()
        reply = generate(receiver.port, prompt=PROMPT, allow_fallback=True)
        assert reply.mode_used == c2c_pb2.MODE_RECEIVER_ONLY
        assert "UNAVAILABLE" in reply.fallback_reason
        assert list(reply.token_ids) == receiver_only_ids(receiver.port)
        assert receiver.pipeline.active_requests == 0
    finally:
        receiver.stop(0)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sharer_unreachable_at_start_up_serves_receiver_only_and_recovers(
    tiny_pair_dirs: TinyPair, fuser_dir: Path
) -> None:
    port = closed_port()
    receiver = start_receiver(tiny_pair_dirs.receiver, fuser_dir, port)
    late_sharer = None
    try:
        card = receiver_stub(receiver.port).Describe(c2c_pb2.DescribeRequest())
        assert not card.c2c_ready and "UNAVAILABLE" in card.c2c_unready_reason
        assert receiver_only_ids(receiver.port)
        error = rpc_error(generate, receiver.port, prompt=PROMPT)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        # A ten-second outage: gRPC's default reconnect backoff would by now have grown to ~6 s.
        time.sleep(10)
        late_sharer = start_sharer(tiny_pair_dirs.llama_sharer, port=port)

        def c2c_answers() -> bool:
            try:
                return generate(receiver.port, prompt=PROMPT).mode_used == c2c_pb2.MODE_C2C
            except grpc.RpcError:
                return False

        assert wait_until(c2c_answers, timeout_s=2.5), "c2c did not recover within 2.5 s"
    finally:
        receiver.stop(0)
        if late_sharer is not None:
            late_sharer.stop(0)


def test_slow_sharer_is_deadline_exceeded_or_a_fallback(
    tiny_pair_dirs: TinyPair, fuser_dir: Path, sharer
) -> None:
    proxy_server, proxy_port = start_proxy(ProxySharer(sharer.port, delay_s=1.0))
    receiver = start_receiver(tiny_pair_dirs.receiver, fuser_dir, proxy_port, sharer_timeout=0.3)
    try:
        error = rpc_error(generate, receiver.port, prompt=PROMPT)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        reply = generate(receiver.port, prompt=PROMPT, allow_fallback=True)
        assert reply.mode_used == c2c_pb2.MODE_RECEIVER_ONLY
        assert "DEADLINE_EXCEEDED" in reply.fallback_reason
        assert list(reply.token_ids) == receiver_only_ids(receiver.port)
    finally:
        receiver.stop(0)
        proxy_server.stop(0)


def test_corrupt_stream_is_data_loss_naming_the_layer_or_a_fallback(
    tiny_pair_dirs: TinyPair, fuser_dir: Path, sharer
) -> None:
    proxy_server, proxy_port = start_proxy(ProxySharer(sharer.port, flip_byte=True))
    receiver = start_receiver(tiny_pair_dirs.receiver, fuser_dir, proxy_port)
    try:
        error = rpc_error(generate, receiver.port, prompt=PROMPT)
        assert error.code() == grpc.StatusCode.DATA_LOSS
        assert "layer" in error.details() and "CRC" in error.details()
        reply = generate(receiver.port, prompt=PROMPT, allow_fallback=True)
        assert reply.mode_used == c2c_pb2.MODE_RECEIVER_ONLY and "layer" in reply.fallback_reason
        assert list(reply.token_ids) == receiver_only_ids(receiver.port)
    finally:
        receiver.stop(0)
        proxy_server.stop(0)


def test_sharer_of_another_model_leaves_c2c_unready(
    tiny_pair_dirs: TinyPair, fuser_dir: Path
) -> None:
    other = start_sharer(tiny_pair_dirs.qwen2_sharer)  # the fuser was trained for the Llama one
    receiver = start_receiver(tiny_pair_dirs.receiver, fuser_dir, other.port)
    try:
        card = receiver_stub(receiver.port).Describe(c2c_pb2.DescribeRequest())
        assert not card.c2c_ready and "sharer" in card.c2c_unready_reason
        assert card.sharer.architecture == "Qwen2ForCausalLM"
        error = rpc_error(generate, receiver.port, prompt=PROMPT)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        fallback = generate(receiver.port, prompt=PROMPT, allow_fallback=True)
        assert fallback.mode_used == c2c_pb2.MODE_RECEIVER_ONLY and fallback.fallback_reason
        assert receiver_only_ids(receiver.port)
    finally:
        receiver.stop(0)
        other.stop(0)


def test_receiver_sets_the_kv_message_size_whatever_the_sharer_default(
    tiny_pair_dirs: TinyPair, fuser_dir: Path, receiver
) -> None:
    sharer = start_sharer(tiny_pair_dirs.llama_sharer, max_message_bytes=4 << 20)
    small = start_receiver(tiny_pair_dirs.receiver, fuser_dir, sharer.port, max_message_bytes=300)
    try:
        reply = generate(small.port, prompt=PROMPT)
        assert reply.mode_used == c2c_pb2.MODE_C2C and not reply.fallback_reason
        assert list(reply.token_ids) == list(generate(receiver.port, prompt=PROMPT).token_ids)
    finally:
        small.stop(0)
        sharer.stop(0)


# -- disconnects ----------------------------------------------------------------------------------


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_client_disconnect_mid_stream_frees_both_services(receiver, sharer) -> None:
    stream = receiver_stub(receiver.port).GenerateStream(
        c2c_pb2.GenerateRequest(prompt=PROMPT, max_new_tokens=64), timeout=60
    )
    first = next(stream)
    assert first.HasField("delta")
    assert receiver.pipeline.active_requests == 1
    stream.cancel()
    assert wait_until(lambda: receiver.pipeline.active_requests == 0)
    assert wait_until(lambda: sharer.prefill.active_requests == 0)


def test_client_disconnect_during_the_kv_transfer_frees_both_services(
    tiny_pair_dirs: TinyPair, fuser_dir: Path, sharer
) -> None:
    proxy_server, proxy_port = start_proxy(ProxySharer(sharer.port, delay_s=1.0))
    receiver = start_receiver(tiny_pair_dirs.receiver, fuser_dir, proxy_port)
    try:
        future = receiver_stub(receiver.port).Generate.future(
            c2c_pb2.GenerateRequest(prompt=PROMPT, max_new_tokens=4), timeout=60
        )
        assert wait_until(lambda: receiver.pipeline.active_requests == 1)
        future.cancel()
        assert wait_until(lambda: receiver.pipeline.active_requests == 0, timeout_s=0.9)
        assert wait_until(lambda: sharer.prefill.active_requests == 0)
    finally:
        receiver.stop(0)
        proxy_server.stop(0)


# -- health and reflection ------------------------------------------------------------------------


def test_health_reports_serving_overall_and_per_service(receiver, sharer) -> None:
    for port, service in ((receiver.port, "c2c.v1.Receiver"), (sharer.port, "c2c.v1.Sharer")):
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        for name in ("", service):
            response = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        error = rpc_error(health.Check, health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert error.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(receiver, sharer) -> None:
    for port, service in ((receiver.port, "c2c.v1.Receiver"), (sharer.port, "c2c.v1.Sharer")):
        stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert {service, "grpc.health.v1.Health"} <= names


# -- mutual TLS -----------------------------------------------------------------------------------


def write_pki(directory: Path) -> dict[str, Path]:
    """A CA, and a server (127.0.0.1) and a client certificate it signed, as PEM files."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(name, key, issuer_name, issuer_key, *, ca: bool, san=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = issue("test-ca", ca_key, "test-ca", ca_key, ca=True)
    files = {"ca": directory / "ca.pem"}
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for role, san in (
        ("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", [x509.DNSName("receiver")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue(role, key, "test-ca", ca_key, ca=False, san=san)
        files[f"{role}_cert"] = directory / f"{role}.pem"
        files[f"{role}_key"] = directory / f"{role}.key"
        files[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{role}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return files


def test_mutual_tls_between_receiver_and_sharer(
    tiny_pair_dirs: TinyPair, fuser_dir: Path, tmp_path: Path
) -> None:
    pki = write_pki(tmp_path)
    sharer = start_sharer(
        tiny_pair_dirs.llama_sharer,
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
        tls_ca=pki["ca"],
        health_port=0,
    )
    with_certs = start_receiver(
        tiny_pair_dirs.receiver,
        fuser_dir,
        sharer.port,
        tls_cert=pki["client_cert"],
        tls_key=pki["client_key"],
        tls_ca=pki["ca"],
    )
    without_certs = start_receiver(tiny_pair_dirs.receiver, fuser_dir, sharer.port)
    try:
        reply = generate(with_certs.port, prompt=PROMPT)
        assert reply.mode_used == c2c_pb2.MODE_C2C and reply.bytes_on_wire > 0
        error = rpc_error(generate, without_certs.port, prompt=PROMPT)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        plaintext = sharer_stub(sharer.port)
        assert rpc_error(plaintext.Describe, c2c_pb2.DescribeRequest(), timeout=5).code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        probe = health_pb2_grpc.HealthStub(
            grpc.insecure_channel(f"127.0.0.1:{sharer.running.health_port}")
        )
        status = probe.Check(health_pb2.HealthCheckRequest(service="c2c.v1.Sharer"), timeout=10)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        with_certs.stop(0)
        without_certs.stop(0)
        sharer.stop(0)


def test_metrics_port_serves_prometheus_counters_of_answered_requests(
    tiny_pair_dirs: TinyPair, fuser_dir: Path, sharer
) -> None:
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    server = start_receiver(
        tiny_pair_dirs.receiver, fuser_dir, sharer.port, metrics_port=metrics_port
    )
    try:
        generate(server.port, prompt="Count me.", max_new_tokens=2, mode=c2c_pb2.MODE_C2C)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            scraped = response.read().decode()
    finally:
        server.stop(0)
    answered = [
        line
        for line in scraped.splitlines()
        if line.startswith("c2c_requests_total{") and 'c2c_mode="c2c"' in line
    ]
    assert answered and float(answered[0].rsplit(" ", 1)[1]) >= 1.0
    assert "c2c_request_duration" in scraped
