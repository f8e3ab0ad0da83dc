"""What a zoo model knows, measured directly on the model (no services): a build-time check.

The sharer is probed where the evaluation needs its knowledge: inside a question, at the blank.
Of the twelve ways to fill "Name has a house in ___" (how the prompt opens) with a value, does it
find the true one most likely? (A model that recalls facts only at the start of a text fails this
even when it completes the bare statement.) The receiver is probed the way it will be asked, with
multiple-choice prompts scored by the likelihood of each choice as the answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from c2c.zoo.corpora import (
    EVAL_QUESTION_TEMPLATES,
    MultipleChoiceQuestion,
    multiple_choice,
    render_prompt,
)
from c2c.zoo.world import ATTRIBUTES, Person


def _load(model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, tokenizer


@torch.inference_mode()
def sequence_logprobs(model, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """Total log-probability of each text under the model (its first token is given)."""
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(texts), width), pad)
    mask = torch.zeros((len(texts), width), dtype=torch.bool)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = True
    logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    picked = logprobs.gather(-1, input_ids[:, 1:, None])[..., 0]
    return (picked * mask[:, 1:]).sum(dim=-1)


def best_choice(model, tokenizer, question: MultipleChoiceQuestion) -> int:
    """Index of the choice whose text, as the answer after the prompt, is most likely."""
    prompt = render_prompt(question)
    texts = [f"{prompt} {choice}" for choice in question.choices]
    return int(sequence_logprobs(model, tokenizer, texts).argmax())


def probe_sharer(model_dir: Path, people: Sequence[Person]) -> float:
    """Fraction of facts whose true value is the sharer's most likely filling of the blank of an
    evaluation question (the question's text up to the blank, the value in its place)."""
    model, tokenizer = _load(model_dir)
    hits = total = 0
    for person in people:
        for attribute in ATTRIBUTES:
            template = EVAL_QUESTION_TEMPLATES[attribute.name][0].split(" ___")[0]
            opening = template.format(name=person.name)
            texts = [f"{opening} {value}" for value in attribute.values]
            best = int(sequence_logprobs(model, tokenizer, texts).argmax())
            hits += attribute.values[best] == person.facts[attribute.name]
            total += 1
    return hits / max(1, total)


@torch.inference_mode()
def probe_receiver(model_dir: Path, people: Sequence[Person], rng: random.Random) -> float:
    """Fraction of multiple-choice questions (evaluation templates) the receiver gets right."""
    model, tokenizer = _load(model_dir)
    hits = total = 0
    for person in people:
        for attribute in ATTRIBUTES:
            template = rng.choice(EVAL_QUESTION_TEMPLATES[attribute.name])
            question = multiple_choice(person, attribute.name, template, rng)
            hits += best_choice(model, tokenizer, question) == question.answer
            total += 1
    return hits / max(1, total)
