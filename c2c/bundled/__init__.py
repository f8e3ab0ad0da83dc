"""The model pair shipped with the package: receiver, sharer, their fuser and the evaluation set.

Built by ``c2c zoo build`` (see CARD.md beside this file); everything runs offline on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class BundledPair:
    """Paths of the shipped pair: Hugging Face model directories, the fuser checkpoint directory,
    and the multiple-choice evaluation questions (JSONL)."""

    receiver: Path
    sharer: Path
    fuser: Path
    eval_questions: Path


def bundled_pair() -> BundledPair:
    """The shipped pair; FileNotFoundError naming what is missing if the install lacks it."""
    pair = BundledPair(
        receiver=BUNDLED_DIR / "receiver",
        sharer=BUNDLED_DIR / "sharer",
        fuser=BUNDLED_DIR / "fuser",
        eval_questions=BUNDLED_DIR / "eval.jsonl",
    )
    missing = [str(path) for path in vars(pair).values() if not path.exists()]
    if missing:
        raise FileNotFoundError(
            f"the bundled model pair is incomplete: missing {', '.join(missing)}"
        )
    return pair
