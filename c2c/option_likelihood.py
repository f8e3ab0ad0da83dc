"""Multiple-choice scoring by likelihood instead of generated text, on local models in-process.

The receiver (alone and with the fused cache) is scored by which choice it finds most likely as
the answer after the multiple-choice prompt; the sharer, which never learnt the question format,
by which choice text it finds most likely after the bare question (cloze style). No sampling, no
parsing: a second view of the same questions that cannot be skewed by an unparseable answer.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from tqdm import tqdm

from c2c.evaluation import wilson_interval
from c2c.local_pair import PairPaths
from c2c.model_loading import LoadedModel, load_causal_lm
from c2c.zoo.corpora import MultipleChoiceQuestion, open_prompt, render_prompt
from c2c.zoo.knowledge_probe import sequence_logprobs
from fuser.alignment import tokenize_with_spans
from fuser.checkpoint import load_checkpoint
from fuser.fused_prefill import fused_prompt_cache, receiver_prefill


@torch.no_grad()
def continuation_logprob(receiver: LoadedModel, cache, last_token: int, text: str) -> float:
    """Log-probability of ``text`` after a prompt whose cache holds all but ``last_token``."""
    continuation = receiver.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[last_token, *continuation[:-1]]], device=receiver.device)
    logits = receiver.model(input_ids=ids, cache=copy.deepcopy(cache), use_cache=True).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return float(logprobs.gather(-1, torch.tensor(continuation)[:, None]).sum())


def _summary(correct: int, n: int) -> dict:
    return {"accuracy": correct / n if n else 0.0, "ci95": list(wilson_interval(correct, n))}


@torch.no_grad()
def likelihood_scores(
    paths: PairPaths, questions: Sequence[MultipleChoiceQuestion], progress: bool = True
) -> dict:
    """Accuracy (with 95% CI) of receiver_only, c2c and sharer_only scored by likelihood."""
    receiver = load_causal_lm(paths.receiver)
    sharer = load_causal_lm(paths.sharer)
    fuser = load_checkpoint(paths.fuser, receiver.card, sharer.card).eval()
    correct = {"receiver_only": 0, "c2c": 0, "sharer_only": 0}
    for question in tqdm(questions, desc="loglik", disable=not progress):
        prompt = render_prompt(question)
        prompt_ids, spans = tokenize_with_spans(receiver.tokenizer, prompt)
        alone = receiver_prefill(receiver, prompt_ids[:-1])
        fused = fused_prompt_cache(receiver, sharer, fuser, prompt_ids, prompt, spans)
        for mode, cache in (("receiver_only", alone), ("c2c", fused)):
            scores = [
                continuation_logprob(receiver, cache, prompt_ids[-1], f" {choice}")
                for choice in question.choices
            ]
            correct[mode] += scores.index(max(scores)) == question.answer
        cloze = [f"{open_prompt(question.question)} {choice}" for choice in question.choices]
        best = int(sequence_logprobs(sharer.model, sharer.tokenizer, cloze).argmax())
        correct["sharer_only"] += best == question.answer
    return {mode: _summary(hits, len(questions)) for mode, hits in correct.items()}
