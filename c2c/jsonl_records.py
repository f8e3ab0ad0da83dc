"""Reading the JSONL files users hand us (training data, evaluation questions).

Every problem is raised as the caller's own error type with the file and line in the message, so
each command can report it in one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def read_jsonl(path: Path, what: str, error: type[Exception]) -> Iterator[tuple[str, object]]:
    """Yields ``("PATH:LINE", record)`` for every non-blank line of ``path``, a ``what`` file."""
    if not path.is_file():
        raise error(f"{what} file {path} does not exist")
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as decode_error:
            raise error(f"{path}:{number}: not valid JSON ({decode_error.msg})") from None
        yield f"{path}:{number}", record
