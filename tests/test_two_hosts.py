"""The sharer and the receiver as two hosts joined by a real, rate-limited network link.

Two network namespaces stand for two machines: each has its own address on a veth pair, and
`tc` shapes each direction of the link. The services run one per namespace, bound to their own
address and configured as deployed (mutual TLS on the sharer's port, its health service alone
in plaintext for probes, round_robin on the receiver's channel), and a client in the receiver's
namespace sends C2C requests, so the KV cache crosses a network boundary exactly as between two
nodes. Needs root (CAP_NET_ADMIN), as CI runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEALTH_CHECK = REPO / "deploy" / "docker" / "grpc_health_check.py"
# Slow enough that moving a tiny model's KV cache takes measurable time on the wire.
LINK_RATE_BITS = 2_000_000
# Link delay, applied where the kernel has sch_netem (the rate works with tbf alone).
LINK_DELAY_MS = 1
SUBNET = "10.203.7"


@dataclass
class TwoHosts:
    """Two namespaces, one address each, and the processes started inside them."""

    sharer_ns: str
    receiver_ns: str
    sharer_ip: str
    receiver_ip: str
    rate_bits: int
    delay_ms: float
    logs: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def run(self, ns: str, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
        )

    def start(self, ns: str, argv: list[str], name: str) -> subprocess.Popen:
        with (self.logs / f"{name}.log").open("w") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv], stdout=log, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def log_of(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def shape(ns: str, device: str, rate_bits: int, delay_ms: float) -> float:
    """Limit the device's egress to rate_bits; add delay_ms when netem exists. Returns the delay
    actually applied."""
    netem = ["netem", "delay", f"{delay_ms}ms", "rate", f"{rate_bits}bit", "limit", "10000"]
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", device, "root", *netem],
        capture_output=True,
        text=True,
    )
    if done.returncode == 0:
        return delay_ms
    # A small bucket: bursts at line rate would hide the limit for transfers of a few KiB.
    tbf = ["tbf", "rate", f"{rate_bits}bit", "burst", "4kb", "latency", "2s"]
    ip("netns", "exec", ns, "tc", "qdisc", "add", "dev", device, "root", *tbf)
    return 0.0


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoHosts]:
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{missing} not found: install iproute2 (bash deploy/install-test-tools.sh)")
    tag = os.getpid()
    hosts = TwoHosts(
        sharer_ns=f"c2c-sharer-{tag}",
        receiver_ns=f"c2c-receiver-{tag}",
        sharer_ip=f"{SUBNET}.1",
        receiver_ip=f"{SUBNET}.2",
        rate_bits=LINK_RATE_BITS,
        delay_ms=0.0,
        logs=tmp_path_factory.mktemp("two_hosts"),
    )
    created: list[str] = []
    try:
        for ns in (hosts.sharer_ns, hosts.receiver_ns):
            added = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
            if added.returncode != 0:
                pytest.fail(
                    "cannot create network namespaces here (needs root or CAP_NET_ADMIN): "
                    f"ip netns add: {added.stderr.strip()}"
                )
            created.append(ns)
        sharer_dev, receiver_dev = f"c2cs{tag % 10**8}", f"c2cr{tag % 10**8}"
        ip(
            *("link", "add", sharer_dev, "netns", hosts.sharer_ns, "type", "veth"),
            *("peer", "name", receiver_dev, "netns", hosts.receiver_ns),
        )
        for ns, dev, address in (
            (hosts.sharer_ns, sharer_dev, hosts.sharer_ip),
            (hosts.receiver_ns, receiver_dev, hosts.receiver_ip),
        ):
            ip("-n", ns, "addr", "add", f"{address}/30", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            hosts.delay_ms = shape(ns, dev, LINK_RATE_BITS, LINK_DELAY_MS)
        if hosts.delay_ms == 0:
            warnings.warn(
                "this kernel has no sch_netem: the link is rate-limited (tbf) with no added delay",
                stacklevel=1,
            )
        yield hosts
    finally:
        stop(hosts.processes)
        for ns in created:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


# A bulk TCP transfer over the link: the sender streams COUNT bytes, the receiver times them.
SEND_BYTES = """
import socket, sys
listener = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
connection, _ = listener.accept()
connection.sendall(b"x" * int(sys.argv[3]))
connection.close()
"""
RECEIVE_BYTES = """
import json, socket, sys, time
for _ in range(100):
    try:
        start = time.perf_counter()
        connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        break
    except OSError:
        time.sleep(0.05)
connect_s = time.perf_counter() - start
first = connection.recv(65536)
began, count = time.perf_counter(), len(first)
while chunk := connection.recv(65536):
    count += len(chunk)
print(json.dumps({"connect_s": connect_s, "bytes": count, "seconds": time.perf_counter() - began}))
"""


def test_link_carries_traffic_between_the_hosts_at_the_shaped_rate(two_hosts: TwoHosts) -> None:
    size = 200_000
    port = "45001"
    two_hosts.start(
        two_hosts.sharer_ns,
        [sys.executable, "-c", SEND_BYTES, two_hosts.sharer_ip, port, str(size)],
        "bulk_sender",
    )
    done = two_hosts.run(
        two_hosts.receiver_ns, [sys.executable, "-c", RECEIVE_BYTES, two_hosts.sharer_ip, port]
    )
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    assert measured["bytes"] == size
    rate = measured["bytes"] * 8 / measured["seconds"]
    # Never faster than the link (plus one token bucket); not starved either.
    assert rate <= two_hosts.rate_bits * 1.15, f"{rate:.0f} bit/s beats the {two_hosts.rate_bits}"
    assert rate >= two_hosts.rate_bits * 0.5, f"{rate:.0f} bit/s on a {two_hosts.rate_bits} link"
    assert measured["connect_s"] >= 2 * two_hosts.delay_ms / 1000


def wait_until_serving(
    hosts: TwoHosts, ns: str, address: str, server: subprocess.Popen, name: str, limit_s: float
) -> None:
    """Poll the server's health service from namespace ns with the images' health check."""
    deadline = time.monotonic() + limit_s
    while True:
        check = hosts.run(ns, [sys.executable, str(HEALTH_CHECK), f"--addr={address}"])
        if check.returncode == 0:
            return
        if server.poll() is not None or time.monotonic() > deadline:
            pytest.fail(
                f"{name} at {address} never served ({check.stdout.strip()}):\n"
                f"{hosts.log_of(name)[-3000:]}"
            )
        time.sleep(0.5)


HEALTH_SERVER = """
import sys, time
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
server.add_insecure_port(sys.argv[1])
server.start()
server.wait_for_termination()
"""


def test_grpc_health_server_on_one_host_answers_a_client_on_the_other(
    two_hosts: TwoHosts,
) -> None:
    address = f"{two_hosts.sharer_ip}:45002"
    server = two_hosts.start(
        two_hosts.sharer_ns, [sys.executable, "-c", HEALTH_SERVER, address], "health"
    )
    wait_until_serving(two_hosts, two_hosts.receiver_ns, address, server, "health", limit_s=30)
    # The test subnet exists only inside the two namespaces: the machine itself has no route to
    # it and never reaches the server (whatever its default route leads to).
    assert SUBNET not in subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    from_machine = subprocess.run(
        [sys.executable, str(HEALTH_CHECK), f"--addr={address}", "--timeout=2"],
        capture_output=True,
        text=True,
    )
    assert from_machine.returncode == 1, from_machine.stdout


# C2C across the link: the real services, one per host, and a client beside the receiver.

SHARER_PORT = 50051
SHARER_HEALTH_PORT = 50061
RECEIVER_PORT = 50052
# Long enough that the sharer's KV cache takes a few hundred milliseconds on the link.
COLORS = ["red", "blue", "green", "amber", "violet", "white"]
ANIMALS = ["cat", "dog", "owl", "fox", "eel", "yak"]
GATES = ["north", "south", "east", "west"]
PROMPT = (
    " ".join(
        f"The {COLORS[day % 6]} {ANIMALS[day % 6]} sat near the {GATES[day % 4]} gate on day {day}."
        for day in range(24)
    )
    + " Which animal sat near the east gate?"
)


# A gRPC client on the receiver's host: one request per JSON line in, one GenerateReply per line
# out. One long-lived process, so each request costs the network and the models, not an import.
CLIENT = """
import json, sys
import grpc
from google.protobuf.json_format import MessageToJson
from protos import c2c_pb2, c2c_pb2_grpc
stub = c2c_pb2_grpc.ReceiverStub(grpc.insecure_channel(sys.argv[1]))
for line in sys.stdin:
    request = c2c_pb2.GenerateRequest(**json.loads(line))
    reply = stub.Generate(request, timeout=120)
    options = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
    print(MessageToJson(reply, indent=None, **options), flush=True)
"""


def generate_request(mode: str, codec: str) -> dict:
    """GenerateRequest fields for PROMPT, as the client on the receiver's host takes them."""
    from c2c.service_config import CodecChoice
    from receiver_service.client import ModeChoice

    return {
        "prompt": PROMPT,
        "mode": ModeChoice(mode).wire,
        "codec": CodecChoice(codec).wire,
        "max_new_tokens": 8,
    }


@dataclass
class Deployed:
    hosts: TwoHosts
    certificates: Certificates
    client: subprocess.Popen
    reference: dict[tuple[str, str], list[int]]

    def generate(self, mode: str, codec: str) -> dict:
        self.client.stdin.write(json.dumps(generate_request(mode, codec)) + "\n")
        self.client.stdin.flush()
        line = self.client.stdout.readline()
        assert line, f"the client on the receiver's host died (Generate {mode} {codec})"
        return json.loads(line)


def loopback_reference(receiver: Path, sharer: Path, fuser: Path) -> dict:
    """The same requests answered by the same pair on 127.0.0.1, in this process."""
    from protos import c2c_pb2
    from tests.service_harness import receiver_stub, start_receiver, start_sharer

    sharer_server = start_sharer(sharer)
    receiver_server = start_receiver(receiver, fuser, sharer_server.port)
    try:
        stub = receiver_stub(receiver_server.port)
        return {
            (mode, codec): list(
                stub.Generate(
                    c2c_pb2.GenerateRequest(**generate_request(mode, codec)), timeout=120
                ).token_ids
            )
            for mode, codec in (("c2c", "fp16"), ("receiver", "fp16"))
        }
    finally:
        receiver_server.stop(0)
        sharer_server.stop(0)


@dataclass(frozen=True)
class Certificates:
    """PEM files for mutual TLS: the CA, the sharer's server pair, the receiver's client pair."""

    ca: Path
    sharer_cert: Path
    sharer_key: Path
    receiver_cert: Path
    receiver_key: Path


def issue_certificates(directory: Path, sharer_ip: str) -> Certificates:
    """A throwaway CA and two certificates, made the way deploy/README.md tells operators to;
    the sharer's names its address, which the receiver verifies."""

    def openssl(*args: str) -> None:
        done = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True)
        assert done.returncode == 0, f"openssl {' '.join(args[:2])}: {done.stderr.strip()}"

    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req",
        "-x509",
        *new_key,
        "-days",
        "1",
        "-subj",
        "/CN=c2c-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    for name, extension in (
        ("sharer", f"subjectAltName=IP:{sharer_ip}"),
        ("receiver", "extendedKeyUsage=clientAuth"),
    ):
        (directory / f"{name}.ext").write_text(extension + "\n")
        openssl(
            "req",
            *new_key,
            "-subj",
            f"/CN=c2c-{name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.crt",
        )
    return Certificates(
        ca=directory / "ca.crt",
        sharer_cert=directory / "sharer.crt",
        sharer_key=directory / "sharer.key",
        receiver_cert=directory / "receiver.crt",
        receiver_key=directory / "receiver.key",
    )


@pytest.fixture(scope="module")
def deployed(two_hosts: TwoHosts, tiny_pair_dirs, tmp_path_factory) -> Deployed:
    from tests.service_harness import save_random_fuser

    receiver_dir, sharer_dir = tiny_pair_dirs.receiver, tiny_pair_dirs.llama_sharer
    fuser_dir = save_random_fuser(
        receiver_dir, sharer_dir, tmp_path_factory.mktemp("fuser") / "fuser", gate_logit=1.0
    )
    tls = issue_certificates(tmp_path_factory.mktemp("tls"), two_hosts.sharer_ip)
    sharer_address = f"{two_hosts.sharer_ip}:{SHARER_PORT}"
    receiver_address = f"{two_hosts.receiver_ip}:{RECEIVER_PORT}"
    # As deployed: mutual TLS on the sharer's port, its health alone in plaintext for probes.
    sharer = two_hosts.start(
        two_hosts.sharer_ns,
        ["c2c-sharer", "--model", str(sharer_dir), "--host", two_hosts.sharer_ip]
        + ["--port", str(SHARER_PORT), "--health-port", str(SHARER_HEALTH_PORT)]
        + ["--tls-cert", str(tls.sharer_cert), "--tls-key", str(tls.sharer_key)]
        + ["--tls-ca", str(tls.ca), "--device", "cpu"],
        "sharer",
    )
    # While the sharer host starts up, answer the same requests on loopback for comparison.
    reference = loopback_reference(receiver_dir, sharer_dir, fuser_dir)
    sharer_health = f"{two_hosts.sharer_ip}:{SHARER_HEALTH_PORT}"
    wait_until_serving(
        two_hosts, two_hosts.receiver_ns, sharer_health, sharer, "sharer", limit_s=120
    )
    receiver = two_hosts.start(
        two_hosts.receiver_ns,
        ["c2c-receiver", "--model", str(receiver_dir), "--fuser", str(fuser_dir)]
        + ["--sharer", sharer_address, "--sharer-lb-policy", "round_robin"]
        + ["--tls-cert", str(tls.receiver_cert), "--tls-key", str(tls.receiver_key)]
        + ["--tls-ca", str(tls.ca), "--host", two_hosts.receiver_ip]
        + ["--port", str(RECEIVER_PORT), "--device", "cpu"],
        "receiver",
    )
    wait_until_serving(
        two_hosts, two_hosts.receiver_ns, receiver_address, receiver, "receiver", limit_s=120
    )
    client = subprocess.Popen(
        ["ip", "netns", "exec", two_hosts.receiver_ns, sys.executable, "-c", CLIENT]
        + [receiver_address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    two_hosts.processes.insert(0, client)
    return Deployed(hosts=two_hosts, certificates=tls, client=client, reference=reference)


def test_c2c_answers_across_the_link_are_those_of_the_same_pair_on_loopback(
    deployed: Deployed,
) -> None:
    c2c = deployed.generate("c2c", "fp16")
    assert c2c["mode_used"] == "MODE_C2C" and not c2c["fallback_reason"]
    assert c2c["sharer_layers"], "no sharer layer crossed the link"
    assert c2c["token_ids"] == deployed.reference["c2c", "fp16"]
    alone = deployed.generate("receiver", "fp16")
    assert alone["mode_used"] == "MODE_RECEIVER_ONLY"
    assert alone["token_ids"] == deployed.reference["receiver", "fp16"]
    assert int(alone["bytes_on_wire"]) == 0


def test_kv_transfer_time_follows_bytes_on_wire_at_the_link_rate(deployed: Deployed) -> None:
    rate = deployed.hosts.rate_bits
    replies = {
        codec: [deployed.generate("c2c", codec) for _ in range(2)] for codec in ("fp16", "int8")
    }
    wire = {codec: int(runs[0]["bytes_on_wire"]) for codec, runs in replies.items()}
    link_ms = {codec: wire[codec] * 8 / rate * 1000 for codec in wire}
    # Transfer time is first request byte to trailer; the sharer's forward pass is inside it.
    on_wire_ms = {
        codec: min(r["timings"]["transfer"] - r["timings"]["sharer_prefill"] for r in runs)
        for codec, runs in replies.items()
    }
    print(
        json.dumps(
            {
                "rate_bits": rate,
                "bytes_on_wire": wire,
                "link_ms": link_ms,
                "transfer_less_prefill_ms": on_wire_ms,
            }
        )
    )
    assert wire["int8"] < wire["fp16"] * 0.75, wire
    for codec, runs in replies.items():
        assert {int(r["bytes_on_wire"]) for r in runs} == {wire[codec]}, "same request, same bytes"
        # The payload never crosses faster than the link (less one token bucket of burst)...
        for reply in runs:
            assert reply["timings"]["transfer"] >= link_ms[codec] * 0.9, (codec, reply["timings"])
        # ...and the link, not the services, is what the transfer mostly waits on.
        assert on_wire_ms[codec] <= link_ms[codec] * 1.25 + 400, (codec, on_wire_ms, link_ms)
    # Fixed costs cancel in the difference: the extra bytes of fp16 at the link's rate.
    extra_ms = on_wire_ms["fp16"] - on_wire_ms["int8"]
    expected_ms = link_ms["fp16"] - link_ms["int8"]
    assert expected_ms * 0.7 - 150 <= extra_ms <= expected_ms * 1.3 + 150, (extra_ms, expected_ms)


# A Describe call over TLS that trusts the CA, showing a client certificate when given one.
DESCRIBE_OVER_TLS = """
import sys
import grpc
from protos import c2c_pb2, c2c_pb2_grpc
address, ca, *client = sys.argv[1:]
cert, key = (open(path, "rb").read() for path in client) if client else (None, None)
credentials = grpc.ssl_channel_credentials(open(ca, "rb").read(), key, cert)
with grpc.secure_channel(address, credentials) as channel:
    try:
        c2c_pb2_grpc.SharerStub(channel).Describe(c2c_pb2.DescribeRequest(), timeout=10)
        print("ANSWERED")
    except grpc.RpcError as error:
        print(error.code().name)
"""


def test_sharer_answers_across_the_link_only_clients_with_a_certificate(
    deployed: Deployed,
) -> None:
    hosts, tls = deployed.hosts, deployed.certificates
    address = f"{hosts.sharer_ip}:{SHARER_PORT}"
    describe = [sys.executable, "-c", DESCRIBE_OVER_TLS, address, str(tls.ca)]
    with_certificate = hosts.run(
        hosts.receiver_ns, describe + [str(tls.receiver_cert), str(tls.receiver_key)]
    )
    assert with_certificate.stdout.strip() == "ANSWERED", with_certificate.stderr[-2000:]
    without_certificate = hosts.run(hosts.receiver_ns, describe)
    assert without_certificate.stdout.strip() == "UNAVAILABLE", without_certificate.stderr
    plaintext = hosts.run(
        hosts.receiver_ns, [sys.executable, str(HEALTH_CHECK), f"--addr={address}", "--timeout=5"]
    )
    assert plaintext.returncode == 1, f"the sharer's port answers plaintext: {plaintext.stdout}"
