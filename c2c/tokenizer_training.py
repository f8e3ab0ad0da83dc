"""Train small tokenizers offline, so a model pair can be built without downloading anything.

Two styles that split text really differently, as a real C2C pair's tokenizers do:
`byte_level` (GPT-2/Qwen style: bytes, regex pre-split, every string encodable) and `metaspace`
(SentencePiece style: spaces become "▁", a smaller vocabulary, unseen characters become <unk>).
Both are saved as fast tokenizers, so offset mappings (used by token alignment) work.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# A ChatML-style template: what the receiver side of the bundled pair is prompted with.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TokenizerSpec:
    """Which style of tokenizer to train and how large."""

    style: str  # "byte_level" or "metaspace"
    vocab_size: int
    min_frequency: int = 2


def _byte_level(spec: TokenizerSpec, texts: Iterable[str]) -> PreTrainedTokenizerFast:
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    wrapped.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _metaspace(spec: TokenizerSpec, texts: Iterable[str]) -> PreTrainedTokenizerFast:
    special = ["<unk>", "<s>", "</s>", "<pad>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=special,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def train_tokenizer(spec: TokenizerSpec, texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Train a tokenizer of the given style on the texts."""
    styles = {"byte_level": _byte_level, "metaspace": _metaspace}
    if spec.style not in styles:
        raise ValueError(
            f"unknown tokenizer style {spec.style!r}; expected one of {sorted(styles)}"
        )
    return styles[spec.style](spec, list(texts))


def train_and_save_tokenizer(
    spec: TokenizerSpec, texts: Iterable[str], out_dir: str | Path
) -> PreTrainedTokenizerFast:
    """Train and save_pretrained into out_dir (tokenizer.json and its configs)."""
    tokenizer = train_tokenizer(spec, texts)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer
