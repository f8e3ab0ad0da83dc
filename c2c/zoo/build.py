"""`c2c zoo build`: the bundled pair from nothing, seeded, on a CPU.

Stages, each resumable on its own with ``--stage``: ``data`` (splits to files), ``tokenizers``
(byte-level BPE for the receiver, SentencePiece-style BPE for the sharer), ``models`` (random
init), ``pretrain`` (receiver, then sharer), ``probe`` (what each model knows), ``fuser``
(``c2c train`` on the fuser split). Everything lands in one directory laid out as the bundle is.
"""

from __future__ import annotations

import json
import random
import shutil
import string
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated

import torch
import typer

from c2c.model_building import ModelSizes, build_causal_lm
from c2c.tokenizer_training import TokenizerSpec, train_and_save_tokenizer
from c2c.zoo.corpora import SplitSizes, ZooSplits, build_splits, question_record
from c2c.zoo.knowledge_probe import probe_receiver, probe_sharer
from c2c.zoo.pretraining import PretrainingConfig, pretrain

STAGES = ("data", "tokenizers", "models", "pretrain", "probe", "fuser")


@dataclass(frozen=True)
class FuserTrainingConfig:
    """What the fuser stage asks of ``c2c train``. Hidden 128 keeps the checkpoint ~6 MB. Long
    training pays although the fuser ends up knowing its training people's facts by heart: on all
    1000 evaluation questions through the services, c2c answered 0.213 after 4000 steps on 6
    multiple-choice variants per fact and 0.156 after 800 steps on 2 (in-process: 0.270, and 0.199
    for the best of 2400 steps by loss on held-out fuser people). See the bundle's CARD."""

    max_steps: int = 4000
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 30
    hidden_size: int = 128
    dropout: float = 0.1


@dataclass(frozen=True)
class BuildConfig:
    """Every size and step count of the build; ``smoke()`` is the same build in seconds."""

    seed: int = 0
    splits: SplitSizes = SplitSizes()
    receiver_tokenizer: TokenizerSpec = TokenizerSpec("byte_level", vocab_size=1024)
    sharer_tokenizer: TokenizerSpec = TokenizerSpec("metaspace", vocab_size=768)
    receiver: ModelSizes = ModelSizes(
        "qwen3", num_layers=4, hidden_size=128, num_heads=4, num_kv_heads=2, head_dim=32,
        intermediate_size=384, max_position_embeddings=512,
    )  # fmt: skip
    sharer: ModelSizes = ModelSizes(
        "llama", num_layers=6, hidden_size=160, num_heads=4, num_kv_heads=4, head_dim=40,
        intermediate_size=384, max_position_embeddings=512,
    )  # fmt: skip
    receiver_pretraining: PretrainingConfig = PretrainingConfig(steps=2000, batch_size=32)
    sharer_pretraining: PretrainingConfig = PretrainingConfig(steps=1100, batch_size=32, lr=4e-3)
    fuser: FuserTrainingConfig = field(default_factory=FuserTrainingConfig)

    @classmethod
    def smoke(cls, seed: int = 0) -> BuildConfig:
        full = cls(seed=seed)
        tiny_splits = SplitSizes(
            receiver_people=12, context_people=4, fuser_people=12, eval_people=6,
            sharer_bios_per_person=2, receiver_bios_per_person=1, receiver_drills_per_fact=1,
            context_drills_per_fact=1, fuser_examples_per_fact=1,
        )  # fmt: skip
        return replace(
            full,
            splits=tiny_splits,
            receiver_tokenizer=replace(full.receiver_tokenizer, vocab_size=300),
            sharer_tokenizer=replace(full.sharer_tokenizer, vocab_size=200),
            receiver=replace(full.receiver, num_layers=2, hidden_size=32, intermediate_size=64,
                             num_heads=2, num_kv_heads=1, head_dim=16),
            sharer=replace(full.sharer, num_layers=3, hidden_size=48, intermediate_size=96,
                           num_heads=2, num_kv_heads=2, head_dim=24),
            receiver_pretraining=PretrainingConfig(steps=3, batch_size=4, warmup_steps=1),
            sharer_pretraining=PretrainingConfig(steps=3, batch_size=4, warmup_steps=1),
            fuser=FuserTrainingConfig(max_steps=2, batch_size=2, warmup_steps=1, hidden_size=16),
        )  # fmt: skip


@dataclass(frozen=True)
class BundleLayout:
    """Where each artifact of a build lives inside its directory."""

    root: Path

    @property
    def receiver(self) -> Path:
        return self.root / "receiver"

    @property
    def sharer(self) -> Path:
        return self.root / "sharer"

    @property
    def fuser(self) -> Path:
        return self.root / "fuser"

    @property
    def eval_questions(self) -> Path:
        return self.root / "eval.jsonl"

    @property
    def training_data(self) -> Path:
        """Corpora and fuser prompts: reproducible from the seed, so not shipped."""
        return self.root / "training"

    @property
    def report(self) -> Path:
        return self.root / "build.json"


def _printable_alphabet() -> str:
    """One line with every printable ASCII character, so the sharer's tokenizer has no <unk> for
    the punctuation of prompts it never trained on (its model still never reads a question)."""
    return string.printable


def _write_jsonl(path: Path, records) -> None:
    with path.open("w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def stage_data(splits: ZooSplits, layout: BundleLayout) -> dict:
    layout.training_data.mkdir(parents=True, exist_ok=True)
    _write_jsonl(layout.training_data / "sharer.jsonl", ({"text": t} for t in splits.sharer_texts))
    _write_jsonl(
        layout.training_data / "receiver.jsonl", ({"text": t} for t in splits.receiver_texts)
    )
    _write_jsonl(layout.training_data / "fuser.jsonl", (asdict(e) for e in splits.fuser_examples))
    _write_jsonl(layout.eval_questions, (question_record(q) for q in splits.eval_questions))
    return {
        "people": {
            "receiver": len(splits.receiver_people),
            "context": len(splits.context_people),
            "fuser": len(splits.fuser_people),
            "eval": len(splits.eval_people),
        },
        "sharer_texts": len(splits.sharer_texts),
        "receiver_texts": len(splits.receiver_texts),
        "fuser_examples": len(splits.fuser_examples),
        "eval_questions": len(splits.eval_questions),
    }


def stage_tokenizers(config: BuildConfig, splits: ZooSplits, layout: BundleLayout) -> dict:
    receiver = train_and_save_tokenizer(
        config.receiver_tokenizer, splits.receiver_texts, layout.training_data / "receiver_tok"
    )
    sharer = train_and_save_tokenizer(
        config.sharer_tokenizer,
        [*splits.sharer_texts, _printable_alphabet()],
        layout.training_data / "sharer_tok",
    )
    return {"receiver_vocab": len(receiver), "sharer_vocab": len(sharer)}


def stage_models(config: BuildConfig, layout: BundleLayout) -> dict:
    from transformers import AutoTokenizer

    sizes = {}
    for sizes_of, tokenizer_dir, out, offset in (
        (config.receiver, "receiver_tok", layout.receiver, 1),
        (config.sharer, "sharer_tok", layout.sharer, 2),
    ):
        tokenizer = AutoTokenizer.from_pretrained(layout.training_data / tokenizer_dir)
        build_causal_lm(sizes_of, tokenizer, out, seed=config.seed + offset)
        sizes[out.name] = asdict(sizes_of)
    return sizes


def _save_half(model_dir: Path) -> None:
    """Ship float16 weights: half the bytes, and the fuser trains on exactly what ships."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.half().save_pretrained(model_dir, safe_serialization=True)


def stage_pretrain(config: BuildConfig, splits: ZooSplits, layout: BundleLayout) -> dict:
    results = {}
    for name, model_dir, texts, pretraining in (
        ("receiver", layout.receiver, splits.receiver_texts, config.receiver_pretraining),
        ("sharer", layout.sharer, splits.sharer_texts, config.sharer_pretraining),
    ):
        result = pretrain(
            model_dir, texts, replace(pretraining, seed=config.seed), description=f"pretrain {name}"
        )
        _save_half(model_dir)
        results[name] = asdict(result)
    return results


def stage_probe(splits: ZooSplits, layout: BundleLayout) -> dict:
    """Measure what the models learnt: the sharer's recall of facts, the receiver's MC skill."""
    sample = random.Random(0)
    eval_people = list(splits.eval_people)
    receiver_people = list(splits.receiver_people)
    return {
        "sharer_recall_eval_people": probe_sharer(layout.sharer, eval_people[:100]),
        "sharer_recall_fuser_people": probe_sharer(layout.sharer, splits.fuser_people[:100]),
        "receiver_mc_own_people": probe_receiver(layout.receiver, receiver_people[:100], sample),
        "receiver_mc_eval_people": probe_receiver(layout.receiver, eval_people[:100], sample),
    }


def stage_fuser(config: BuildConfig, layout: BundleLayout) -> dict:
    from fuser.projector import ProjectorConfig
    from fuser.training import TrainConfig, train

    metrics = train(
        TrainConfig(
            sharer=layout.sharer,
            receiver=layout.receiver,
            data=layout.training_data / "fuser.jsonl",
            out=layout.training_data / "fuser_run",
            max_steps=config.fuser.max_steps,
            batch_size=config.fuser.batch_size,
            lr=config.fuser.lr,
            warmup_steps=config.fuser.warmup_steps,
            seed=config.seed,
            eval_fraction=0.05,
            device="cpu",
            projector=ProjectorConfig(
                hidden_size=config.fuser.hidden_size, dropout=config.fuser.dropout
            ),
        )
    )
    run = layout.training_data / "fuser_run"
    layout.fuser.mkdir(parents=True, exist_ok=True)
    for name in ("fuser.safetensors", "fuser_config.json", "metrics.json"):
        shutil.copyfile(run / name, layout.fuser / name)
    return {key: value for key, value in metrics.items() if key != "config"}


def run_build(config: BuildConfig, out: Path, stages: tuple[str, ...] = STAGES) -> dict:
    """Run ``stages`` in order into ``out``; returns (and writes) the build report."""
    layout = BundleLayout(out)
    out.mkdir(parents=True, exist_ok=True)
    report = json.loads(layout.report.read_text()) if layout.report.is_file() else {}
    report["config"] = json.loads(json.dumps(asdict(config)))
    splits = build_splits(config.splits, seed=config.seed)
    for stage in stages:
        start = time.perf_counter()
        typer.echo(f"[zoo build] stage {stage}", err=True)
        if stage == "data":
            result = stage_data(splits, layout)
        elif stage == "tokenizers":
            result = stage_tokenizers(config, splits, layout)
        elif stage == "models":
            result = stage_models(config, layout)
        elif stage == "pretrain":
            result = stage_pretrain(config, splits, layout)
        elif stage == "probe":
            result = stage_probe(splits, layout)
        else:
            result = stage_fuser(config, layout)
        report[stage] = {"seconds": round(time.perf_counter() - start, 1), "result": result}
        layout.report.write_text(json.dumps(report, indent=2) + "\n")
    return report


def build_command(
    out: Annotated[Path, typer.Option(help="Directory the pair is built into.")] = Path(
        "zoo-build"
    ),
    stage: Annotated[
        list[str] | None,
        typer.Option(help=f"Run only these stages (repeatable): {', '.join(STAGES)}."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the world, the splits and every init.")] = 0,
    smoke: Annotated[
        bool, typer.Option(help="Tiny sizes and a few steps: checks the pipeline in seconds.")
    ] = False,
) -> None:
    """Train both tokenizers, pretrain both models and train their fuser, from a seed.

    With OMP_NUM_THREADS=1 the default seed rebuilds the bundled pair bit for bit; more threads
    run faster but sum floats in another order, so the sharer and fuser differ.
    """
    stages = tuple(stage) if stage else STAGES
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        typer.echo(f"error: unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}", err=True)
        raise typer.Exit(2)
    config = BuildConfig.smoke(seed) if smoke else BuildConfig(seed=seed)
    report = run_build(config, out, tuple(s for s in STAGES if s in stages))
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2))
