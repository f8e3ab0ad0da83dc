"""The commands users type: ``c2c generate`` against real servers, and the service entry points."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner, Result

from c2c import service_config
from c2c.cli import app
from receiver_service.cli import app as receiver_app
from sharer_service.cli import app as sharer_app
from tests.service_harness import save_random_fuser, start_receiver, start_sharer
from tests.tiny_models import TinyPair

PROMPT = "The red cat sleeps. Say the animal and its color:"


@pytest.fixture(scope="module")
def receiver_port(tiny_pair_dirs: TinyPair, tmp_path_factory):
    fuser_dir = save_random_fuser(
        tiny_pair_dirs.receiver, tiny_pair_dirs.llama_sharer, tmp_path_factory.mktemp("fuser")
    )
    sharer = start_sharer(tiny_pair_dirs.llama_sharer)
    receiver = start_receiver(tiny_pair_dirs.receiver, fuser_dir, sharer.port)
    yield receiver.port
    receiver.stop(0)
    sharer.stop(0)


def c2c(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "c2c.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_generate_json_prints_the_reply_with_proto_field_names(receiver_port: int) -> None:
    done = c2c(
        "generate",
        PROMPT,
        "--max-new-tokens",
        "5",
        "--codec",
        "int8",
        "--json",
        env={"C2C_RECEIVER": f"127.0.0.1:{receiver_port}"},
    )
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["mode_used"] == "MODE_C2C" and reply["fallback_reason"] == ""
    assert reply["codec_used"] == "CODEC_INT8"
    assert 0 < len(reply["token_ids"]) <= 5 and isinstance(reply["text"], str)
    assert re.fullmatch(r"[0-9a-f]{32}", reply["trace_id"])
    assert int(reply["bytes_on_wire"]) > 0 and reply["timings"]["total"] > 0
    assert reply["sharer_layers"] and reply["fused_layers"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_generate_prints_the_answer_text(receiver_port: int) -> None:
    receiver = f"127.0.0.1:{receiver_port}"
    args = ("generate", PROMPT, "--receiver", receiver, "--mode", "receiver")
    as_json = json.loads(invoke(*args, "--max-new-tokens", "4", "--json").stdout)
    done = invoke(*args, "--max-new-tokens", "4")
    assert done.exit_code == 0, done.stderr
    assert done.stdout == as_json["text"] + "\n"


def test_generate_bad_input_is_one_line_and_exit_1(receiver_port: int) -> None:
    done = invoke("generate", PROMPT, "--receiver", f"127.0.0.1:{receiver_port}", "--top-p", "1.5")
    assert done.exit_code == 1
    assert done.stderr.strip().splitlines() == [
        "error: INVALID_ARGUMENT: top_p: must be in (0, 1] (0 means 1.0), got 1.5"
    ]


def test_generate_without_a_receiver_says_unavailable() -> None:
    done = invoke("generate", PROMPT, "--receiver", "127.0.0.1:1", "--timeout", "5")
    assert done.exit_code == 1
    assert done.stderr.startswith("error: UNAVAILABLE:") and len(done.stderr.splitlines()) == 1


def test_services_without_a_model_or_bundled_pair_exit_with_one_line(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("C2C_MODEL", raising=False)
    monkeypatch.delenv("C2C_FUSER", raising=False)
    monkeypatch.setattr(service_config, "BUNDLED_DIR", tmp_path / "not-installed")
    for service_app in (sharer_app, receiver_app):
        done = CliRunner().invoke(service_app, [])
        assert done.exit_code == 2
        assert done.stderr.strip().splitlines() == [
            "error: --model is required (no bundled default pair is installed)"
        ]


def test_receiver_refuses_graph_buckets_that_are_not_lengths() -> None:
    for bad in ("64,x", "0,128"):
        done = CliRunner().invoke(receiver_app, ["--graph-buckets", bad])
        assert done.exit_code == 2
        assert "--graph-buckets" in done.output and bad in done.output


def test_sharer_process_binds_port_0_serves_health_and_stops_on_sigterm(
    tiny_pair_dirs: TinyPair,
) -> None:
    env = {**os.environ, "C2C_MODEL": str(tiny_pair_dirs.llama_sharer), "C2C_PORT": "0"}
    process = subprocess.Popen(
        ["c2c-sharer", "--host", "127.0.0.1"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if match := re.search(r"on 127\.0\.0\.1:(\d+)", line):
                port = int(match.group(1))
        assert port, "the sharer never logged its bound port"
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        status = health.Check(health_pb2.HealthCheckRequest(service="c2c.v1.Sharer"), timeout=10)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
