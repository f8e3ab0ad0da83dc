"""`c2c demo` via its real CLI: services up, every mode side by side, a trace, clean shutdown."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

from typer.testing import CliRunner

from c2c.cli import app
from tests.service_harness import save_random_fuser

QUESTIONS = [
    {"question": f"Which town does {name} live in?", "choices": ["Ambridge", "Fallow", "Kestrel",
     "Corvale"], "answer": index % 4}
    for index, name in enumerate(["Zorvik", "Talmera", "Brisko", "Gloumar"])
]  # fmt: skip
MODES = ("receiver_only", "sharer_only", "text", "c2c")


def test_demo_answers_in_every_mode_traces_one_request_and_stops_both_services(
    tiny_pair_dirs, tmp_path
):
    questions = tmp_path / "mc.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    fuser = save_random_fuser(tiny_pair_dirs.receiver, tiny_pair_dirs.llama_sharer, tmp_path / "f")
    out = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable, "-m", "c2c.cli", "demo", "--questions", "1", "--sample", "2",
            "--out", str(out), "--questions-file", str(questions),
            "--receiver-model", str(tiny_pair_dirs.receiver),
            "--sharer-model", str(tiny_pair_dirs.llama_sharer), "--fuser", str(fuser),
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    shown = text.split("Accuracy on")[0]
    assert "correct:" in shown
    for mode in MODES:
        assert re.search(rf"^\s+{mode}\s.*(right|wrong)", shown, re.MULTILINE), mode
        assert re.search(rf"^{mode}\s+[01]\.\d{{3}}\s+\[", text, re.MULTILINE), mode
    assert "bytes on the wire" in text and "time_to_first_token" in text
    waterfall = text.split("both services stopped")[1]
    assert "c2c-receiver" in waterfall and "c2c-sharer" in waterfall
    assert "network.transfer" in waterfall and "fusion" in waterfall
    assert (out / "c2c_trace.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "c2c-receiver.otlp.jsonl").stat().st_size > 0
    for address in re.search(r"sharer (\S+), receiver (\S+)", text).groups():
        host, port = address.rsplit(":", 1)
        with socket.socket() as probe:
            assert probe.connect_ex((host, int(port))) != 0, f"{address} still accepts connections"


def test_demo_without_its_questions_file_says_so_in_one_line(tmp_path):
    missing = tmp_path / "absent.jsonl"
    result = CliRunner().invoke(
        app,
        ["demo", "--questions-file", str(missing), "--receiver-model", str(tmp_path),
         "--sharer-model", str(tmp_path), "--fuser", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: questions file {missing} does not exist"]
