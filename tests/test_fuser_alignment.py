"""Token alignment between the tiny byte-level (receiver) and metaspace (sharer) tokenizers."""

from __future__ import annotations

import pytest

from c2c.errors import BadRequest
from fuser.alignment import align_positions, default_strategy, tokenize_with_spans
from tests.tiny_models import TRICKY_TEXTS

ALL_TEXTS = [*TRICKY_TEXTS, "  leading and trailing   ", "a", "12345678901234567890", "!!!???..."]


@pytest.mark.parametrize("text", ALL_TEXTS)
def test_offsets_gives_one_sharer_token_covering_each_receiver_tokens_last_character(
    tiny_receiver, tiny_llama_sharer, text
):
    _, spans = tokenize_with_spans(tiny_receiver.tokenizer, text)
    sharer_ids, positions = align_positions("offsets", text, spans, tiny_llama_sharer.tokenizer)
    _, sharer_offsets = tokenize_with_spans(tiny_llama_sharer.tokenizer, text)
    assert len(positions) == len(spans)
    assert len(sharer_ids) == len(sharer_offsets)
    assert positions == sorted(positions)
    for (start, end), position in zip(spans, positions, strict=True):
        sharer_start, sharer_end = sharer_offsets[position]
        last = end - 1
        covered = sharer_start <= last < sharer_end
        # Characters no sharer token covers take the nearest sharer token before them.
        assert covered or sharer_end <= last or position == 0, (text[start:end], position)


def test_offsets_on_emoji_and_accents_take_the_token_holding_the_whole_character(
    tiny_receiver, tiny_llama_sharer
):
    text = "Zürich 🙂"
    _, spans = tokenize_with_spans(tiny_receiver.tokenizer, text)
    _, positions = align_positions("offsets", text, spans, tiny_llama_sharer.tokenizer)
    _, sharer_offsets = tokenize_with_spans(tiny_llama_sharer.tokenizer, text)
    emoji = text.index("🙂")
    emoji_tokens = [i for i, (start, end) in enumerate(spans) if start <= emoji < end]
    assert emoji_tokens, "the receiver has a token containing the emoji"
    for token in emoji_tokens:
        sharer_start, sharer_end = sharer_offsets[positions[token]]
        assert sharer_start <= emoji < sharer_end


@pytest.mark.parametrize("text", ALL_TEXTS)
def test_first_prefills_one_sharer_token_per_receiver_token(tiny_receiver, tiny_llama_sharer, text):
    _, spans = tokenize_with_spans(tiny_receiver.tokenizer, text)
    sharer_ids, positions = align_positions("first", text, spans, tiny_llama_sharer.tokenizer)
    assert positions == list(range(len(spans)))
    assert len(sharer_ids) == len(spans)
    for (start, end), token in zip(spans, sharer_ids, strict=True):
        expected = tiny_llama_sharer.tokenizer(text[start:end], add_special_tokens=False)
        assert token == expected["input_ids"][0]


def test_identity_uses_the_receivers_token_ids_unchanged(tiny_receiver):
    text = TRICKY_TEXTS[0]
    ids, spans = tokenize_with_spans(tiny_receiver.tokenizer, text)
    assert align_positions("identity", text, spans, tiny_receiver.tokenizer, ids) == (
        ids,
        list(range(len(ids))),
    )
    assert align_positions("identity", text, spans, tiny_receiver.tokenizer) == (
        ids,
        list(range(len(ids))),
    )


def test_identity_with_a_different_tokenizer_is_refused(tiny_receiver, tiny_llama_sharer):
    text = TRICKY_TEXTS[1]
    _, spans = tokenize_with_spans(tiny_receiver.tokenizer, text)
    with pytest.raises(BadRequest, match="tokenizes the text differently"):
        align_positions("identity", text, spans, tiny_llama_sharer.tokenizer)


def test_default_strategy_is_identity_only_for_the_same_tokenizer(tiny_receiver, tiny_llama_sharer):
    receiver = tiny_receiver.card.tokenizer_fingerprint
    sharer = tiny_llama_sharer.card.tokenizer_fingerprint
    assert default_strategy(receiver, receiver) == "identity"
    assert default_strategy(receiver, sharer) == "offsets"


def test_empty_spans_of_inserted_special_tokens_take_the_preceding_sharer_token(tiny_llama_sharer):
    text = "red cat"
    spans = [(0, 0), (0, 3), (3, 3), (3, 7)]
    _, positions = align_positions("offsets", text, spans, tiny_llama_sharer.tokenizer)
    _, sharer_offsets = tokenize_with_spans(tiny_llama_sharer.tokenizer, text)
    assert positions[0] == 0
    assert positions[2] == positions[1]
    assert sharer_offsets[positions[3]][1] == 7
    ids, first_positions = align_positions("first", text, spans, tiny_llama_sharer.tokenizer)
    assert ids[0] == ids[2] == tiny_llama_sharer.tokenizer.unk_token_id
    assert first_positions == [0, 1, 2, 3]


def test_empty_text_is_represented_by_one_fallback_sharer_token(tiny_llama_sharer):
    ids, positions = align_positions("offsets", "", [(0, 0)], tiny_llama_sharer.tokenizer)
    assert ids == [tiny_llama_sharer.tokenizer.unk_token_id]
    assert positions == [0]


@pytest.mark.parametrize("span", [(3, 2), (0, 99), (-1, 2)])
def test_span_outside_the_text_is_refused_naming_it(tiny_llama_sharer, span):
    with pytest.raises(BadRequest, match="receiver span 1"):
        align_positions("offsets", "red cat", [(0, 3), span], tiny_llama_sharer.tokenizer)


def test_unknown_strategy_is_refused(tiny_llama_sharer):
    with pytest.raises(BadRequest, match="unknown alignment 'last'"):
        align_positions("last", "red", [(0, 3)], tiny_llama_sharer.tokenizer)
