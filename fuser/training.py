"""Train a fuser between two frozen models: `c2c train --sharer --receiver --data --out`.

Only the fuser learns. The loss is the receiver's next-token cross-entropy on each response given
the fused prompt cache (`fused_prompt_cache`, the same reference the services match). Examples run
one at a time (prompts differ in length and alignment), and their gradients are accumulated over
`batch_size * grad_accum` examples per optimizer step. The held-out split is scored with and
without fusion at the end, so `metrics.json` says whether the fuser helps.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import typer
from tqdm import tqdm

from c2c.errors import C2CError
from c2c.jsonl_records import read_jsonl
from c2c.model_loading import LoadedModel, load_causal_lm
from fuser.alignment import STRATEGIES, default_strategy, tokenize_with_spans
from fuser.checkpoint import load_checkpoint, save_checkpoint
from fuser.fused_prefill import fused_prompt_cache, receiver_prefill
from fuser.fuser import C2CFuser, FuserConfig
from fuser.projector import ProjectorConfig, gate_temperature

RESUME_DIR = "resume"
STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.json"


class TrainingDataError(ValueError):
    """The data file is missing, unreadable, or has a record the trainer cannot use."""


@dataclass
class TrainConfig:
    """Every knob of a training run; recorded in the checkpoint and metrics."""

    sharer: Path
    receiver: Path
    data: Path
    out: Path
    max_steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    schedule: str = "cosine"
    max_grad_norm: float = 1.0
    dtype: str = "float32"
    seed: int = 0
    eval_fraction: float = 0.1
    save_every: int = 100
    resume: bool = False
    stop_after_steps: int | None = None
    device: str = "auto"
    layer_map: str = "last_aligned"
    alignment: str | None = None
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    gate_anneal_steps: int | None = None
    max_prompt_tokens: int = 512
    max_response_tokens: int = 256
    progress: bool = True


@dataclass(frozen=True)
class Example:
    """One tokenized record: the receiver's prompt ids, their spans, the text and the response."""

    prompt_ids: list[int]
    spans: list[tuple[int, int]]
    text: str
    response_ids: list[int]


def read_records(path: Path) -> list[tuple[str, str, list[dict] | None]]:
    """(prompt, response, messages) per JSONL line: prompt/response records or chat messages."""
    records = []
    for where, record in read_jsonl(path, "data", TrainingDataError):
        if isinstance(record, dict) and isinstance(record.get("messages"), list):
            messages = record["messages"]
            if len(messages) < 2 or messages[-1].get("role") != "assistant":
                raise TrainingDataError(
                    f"{where}: messages must end with an assistant message after a prompt"
                )
            records.append(("", str(messages[-1].get("content", "")), messages[:-1]))
        elif isinstance(record, dict) and {"prompt", "response"} <= record.keys():
            records.append((str(record["prompt"]), str(record["response"]), None))
        else:
            raise TrainingDataError(
                f"{where}: expected {{'prompt', 'response'}} or {{'messages': [...]}}"
            )
    if len(records) < 2:
        raise TrainingDataError(f"{path}: need at least 2 records (training and evaluation)")
    return records


def tokenize_records(
    records: list[tuple[str, str, list[dict] | None]], receiver: LoadedModel, config: TrainConfig
) -> list[Example]:
    """Receiver tokenization; chat records go through the receiver's chat template."""
    tokenizer = receiver.tokenizer
    examples = []
    for index, (prompt, response, messages) in enumerate(records):
        if messages is not None:
            if not tokenizer.chat_template:
                raise TrainingDataError("chat records need a receiver with a chat template")
            prompt = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        prompt_ids, spans = tokenize_with_spans(tokenizer, prompt)
        keep = config.max_prompt_tokens
        prompt_ids, spans = prompt_ids[-keep:], spans[-keep:]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        response_ids = response_ids[: config.max_response_tokens - 1] + [tokenizer.eos_token_id]
        if len(prompt_ids) < 2:
            raise TrainingDataError(f"record {index + 1}: the prompt needs at least 2 tokens")
        examples.append(Example(prompt_ids, spans, prompt, response_ids))
    return examples


def response_loss(receiver: LoadedModel, cache, example: Example) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the response given a prompt cache of positions 0..N-2."""
    inputs = [example.prompt_ids[-1], *example.response_ids[:-1]]
    ids = torch.tensor([inputs], device=receiver.device)
    logits = receiver.model(input_ids=ids, cache=cache, use_cache=True).logits[0].float()
    targets = torch.tensor(example.response_ids, device=receiver.device)
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    return loss, len(example.response_ids)


def _autocast(device: torch.device, dtype: str):
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    receiver: LoadedModel,
    sharer: LoadedModel,
    fuser: C2CFuser,
    examples: list[Example],
    dtype: str,
) -> tuple[float, float]:
    """Mean per-token response loss with fusion (hard gates) and with the receiver alone."""
    was_training = fuser.training
    fuser.eval()
    fused_sum = alone_sum = 0.0
    tokens = 0
    for example in examples:
        with _autocast(receiver.device, dtype):
            cache = fused_prompt_cache(
                receiver, sharer, fuser, example.prompt_ids, example.text, example.spans
            )
            fused_sum += response_loss(receiver, cache, example)[0].item()
            alone = receiver_prefill(receiver, example.prompt_ids[:-1])
            loss, count = response_loss(receiver, alone, example)
        alone_sum += loss.item()
        tokens += count
    fuser.train(was_training)
    return fused_sum / tokens, alone_sum / tokens


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then linear or cosine decay to zero at max_steps."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    progress = min(progress, 1.0)
    if config.schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _split(examples: list[Example], config: TrainConfig) -> tuple[list[Example], list[Example]]:
    order = list(range(len(examples)))
    random.Random(config.seed).shuffle(order)
    held_out = max(1, round(len(examples) * config.eval_fraction))
    held_out = min(held_out, len(examples) - 1)
    return [examples[i] for i in order[held_out:]], [examples[i] for i in order[:held_out]]


def _example_stream(train: list[Example], seed: int, start: int):
    """The same endless, epoch-shuffled order on every run, starting at example `start`."""
    index = start
    while True:
        epoch, position = divmod(index, len(train))
        order = list(range(len(train)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        yield train[order[position]]
        index += 1


def _save_resume_point(fuser, optimizer, scheduler, step, examples_seen, config) -> None:
    """Write the resume point to a temporary folder, then swap it in, so a kill leaves one whole."""
    final = config.out / RESUME_DIR
    staging = config.out / f"{RESUME_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    save_checkpoint(fuser, staging, extra={"step": step})
    state = {
        "step": step,
        "examples_seen": examples_seen,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    torch.save(state, staging / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _start_or_resume(config: TrainConfig, receiver: LoadedModel, sharer: LoadedModel, device: str):
    """A fresh fuser and optimizer, or both restored from OUT/resume with the step reached."""
    resume_dir = config.out / RESUME_DIR
    if config.resume:
        if not (resume_dir / STATE_FILE).is_file():
            raise FileNotFoundError(f"--resume: no resume point in {resume_dir}")
        fuser = load_checkpoint(resume_dir, receiver.card, sharer.card, device).train()
    else:
        alignment = config.alignment or default_strategy(
            receiver.card.tokenizer_fingerprint, sharer.card.tokenizer_fingerprint
        )
        fuser_config = FuserConfig(
            receiver.card, sharer.card, config.projector, config.layer_map, alignment
        )
        fuser = C2CFuser(fuser_config).to(device).train()
    optimizer = torch.optim.AdamW(
        fuser.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    if not config.resume:
        return fuser, optimizer, scheduler, 0, 0
    state = torch.load(resume_dir / STATE_FILE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return fuser, optimizer, scheduler, state["step"], state["examples_seen"]


def train(config: TrainConfig) -> dict:
    """Run training as configured and return the metrics also written to out/metrics.json."""
    if config.schedule not in ("cosine", "linear"):
        raise ValueError(f"unknown schedule {config.schedule!r}; expected cosine or linear")
    if config.alignment is not None and config.alignment not in STRATEGIES:
        raise ValueError(f"unknown alignment {config.alignment!r}; expected one of {STRATEGIES}")
    if config.max_steps < 1 or config.batch_size < 1 or config.grad_accum < 1:
        raise ValueError("max_steps, batch_size and grad_accum must be at least 1")
    device = _device(config.device)
    torch.manual_seed(config.seed)
    records = read_records(config.data)
    receiver = load_causal_lm(config.receiver, config.dtype, device)
    sharer = load_causal_lm(config.sharer, config.dtype, device)
    train_set, eval_set = _split(tokenize_records(records, receiver, config), config)
    config.out.mkdir(parents=True, exist_ok=True)

    fuser, optimizer, scheduler, step, examples_seen = _start_or_resume(
        config, receiver, sharer, device
    )
    per_step = config.batch_size * config.grad_accum
    stream = _example_stream(train_set, config.seed, examples_seen)
    anneal_steps = config.gate_anneal_steps or config.max_steps
    started = time.perf_counter()
    tokens_done = 0
    last_loss = float("nan")
    progress = tqdm(total=config.max_steps, initial=step, desc="train", disable=not config.progress)
    stop_at = min(config.max_steps, config.stop_after_steps or config.max_steps)
    while step < stop_at:
        fuser.gate_temperature = gate_temperature(step, anneal_steps)
        step_loss = step_tokens = 0.0
        for _ in range(per_step):
            example = next(stream)
            with _autocast(receiver.device, config.dtype):
                cache = fused_prompt_cache(
                    receiver, sharer, fuser, example.prompt_ids, example.text, example.spans
                )
                loss_sum, count = response_loss(receiver, cache, example)
            (loss_sum / (count * per_step)).backward()
            step_loss += loss_sum.item()
            step_tokens += count
            tokens_done += len(example.prompt_ids) + count
        examples_seen += per_step
        torch.nn.utils.clip_grad_norm_(fuser.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        last_loss = step_loss / step_tokens
        elapsed = time.perf_counter() - started
        progress.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tokens_done / elapsed:.0f}")
        progress.update(1)
        if step == stop_at or (config.save_every and step % config.save_every == 0):
            _save_resume_point(fuser, optimizer, scheduler, step, examples_seen, config)
    progress.close()
    if step < config.max_steps:
        return {"steps": step, "stopped_early": True}

    eval_loss, eval_loss_no_fusion = evaluate(receiver, sharer, fuser, eval_set, config.dtype)
    save_checkpoint(fuser, config.out, extra={"step": step})
    elapsed = time.perf_counter() - started
    metrics = {
        "eval_loss": eval_loss,
        "eval_loss_no_fusion": eval_loss_no_fusion,
        "train_loss_last_step": last_loss,
        "steps": step,
        "train_examples": len(train_set),
        "eval_examples": len(eval_set),
        "tokens_per_s_this_run": tokens_done / elapsed if elapsed else 0.0,
        "fused_receiver_layers": fuser.eval().fused_receiver_layers(),
        "required_sharer_layers": fuser.required_sharer_layers(),
        "config": json.loads(json.dumps(asdict(config), default=str)),
    }
    (config.out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return metrics


def train_command(
    sharer: Annotated[Path, typer.Option(help="Sharer model directory.")],
    receiver: Annotated[Path, typer.Option(help="Receiver model directory.")],
    data: Annotated[Path, typer.Option(help="JSONL of prompt/response or messages records.")],
    out: Annotated[Path, typer.Option(help="Output directory (fuser, resume point, metrics).")],
    max_steps: Annotated[int, typer.Option(min=1)] = 1000,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Examples per micro-batch (run one by one).")
    ] = 8,
    grad_accum: Annotated[int, typer.Option(min=1)] = 1,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-4,
    warmup_steps: Annotated[int, typer.Option(min=0)] = 50,
    schedule: Annotated[str, typer.Option(help="cosine or linear decay.")] = "cosine",
    max_grad_norm: Annotated[float, typer.Option(min=0.0)] = 1.0,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "float32",
    seed: int = 0,
    eval_fraction: Annotated[float, typer.Option(min=0.0, max=0.9)] = 0.1,
    save_every: Annotated[int, typer.Option(min=0, help="Resume point every N steps.")] = 100,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/resume.")] = False,
    stop_after_steps: Annotated[
        int | None, typer.Option(min=1, help="End this run at this step (resume later).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    layer_map: Annotated[str, typer.Option(help="last_aligned or proportional.")] = "last_aligned",
    alignment: Annotated[str | None, typer.Option(help="identity, offsets or first.")] = None,
    hidden_size: Annotated[int, typer.Option(min=1, help="Projector width.")] = 256,
    trunk_blocks: Annotated[int, typer.Option(min=0, help="Shared SwiGLU blocks.")] = 1,
    projection_blocks: Annotated[int, typer.Option(min=0)] = 1,
    dropout: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
    gate_anneal_steps: Annotated[
        int | None, typer.Option(min=1, help="Gate temperature 1 -> 0.001 over N steps.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Train a C2C fuser between two frozen models; writes OUT/metrics.json."""
    for name, path in (("--sharer", sharer), ("--receiver", receiver)):
        if not path.is_dir():
            typer.echo(f"error: {name} {path} is not a directory", err=True)
            raise typer.Exit(2)
    config = TrainConfig(
        sharer=sharer,
        receiver=receiver,
        data=data,
        out=out,
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        warmup_steps=warmup_steps,
        schedule=schedule,
        max_grad_norm=max_grad_norm,
        dtype=dtype,
        seed=seed,
        eval_fraction=eval_fraction,
        save_every=save_every,
        resume=resume,
        stop_after_steps=stop_after_steps,
        device=device,
        layer_map=layer_map,
        alignment=alignment,
        projector=ProjectorConfig(
            hidden_size=hidden_size,
            trunk_blocks=trunk_blocks,
            projection_blocks=projection_blocks,
            dropout=dropout,
        ),
        gate_anneal_steps=gate_anneal_steps,
        progress=progress,
    )
    try:
        metrics = train(config)
    except (C2CError, ValueError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    keys = ("eval_loss", "eval_loss_no_fusion", "steps", "stopped_early")
    typer.echo(json.dumps({k: metrics[k] for k in keys if k in metrics}))
