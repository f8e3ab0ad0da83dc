"""Map the receiver's token positions onto sharer tokens when the two tokenizers differ.

The sharer must hand over exactly one KV position per receiver token. Strategies:

- `identity`: same tokenizer; the receiver's own token ids are prefilled as they are.
- `offsets` (default for different tokenizers): the sharer tokenizes the whole text naturally and
  each receiver token takes the sharer token that covers its last character.
- `first`: each receiver token's text is re-tokenized on its own and its first sharer piece is
  prefilled, so the sharer sequence has exactly one token per receiver token.

Edge cases, handled the same way by every caller:

- A character that no sharer token covers (a tokenizer that drops whitespace) takes the nearest
  sharer token before it, or the first sharer token when none precedes it.
- An empty receiver span (a special token the receiver inserted without text, such as a BOS)
  takes the sharer token covering the character just before it (`offsets`), or the sharer's
  fallback token (`first`): its unk, else bos, else eos token.
- Text the sharer turns into no tokens at all (empty or all-empty spans) is represented by one
  fallback token, so the sharer always has something to prefill.
- Special tokens written in the text (a chat template's `<|im_start|>`) are ordinary text for the
  sharer unless its tokenizer knows them too.
"""

from __future__ import annotations

from collections.abc import Sequence

from c2c.errors import BadRequest

STRATEGIES = ("identity", "offsets", "first")


def tokenize_with_spans(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of text and each token's [start, end) character span, without added specials."""
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    return list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]


def default_strategy(receiver_tokenizer_fingerprint: str, sharer_tokenizer_fingerprint: str) -> str:
    """`identity` when both sides use the same tokenizer, else `offsets`."""
    same = receiver_tokenizer_fingerprint == sharer_tokenizer_fingerprint
    return "identity" if same else "offsets"


def _fallback_token(tokenizer) -> int:
    for token_id in (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise BadRequest("the sharer tokenizer has no unk, bos or eos token to stand in for no text")


def _check_spans(text: str, spans: Sequence[tuple[int, int]]) -> None:
    for index, (start, end) in enumerate(spans):
        if not 0 <= start <= end <= len(text):
            raise BadRequest(
                f"receiver span {index} [{start}, {end}) is outside the text of {len(text)} "
                "characters or reversed"
            )


def _covering_token(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """For each character, the sharer token covering it (the last one where pieces overlap)."""
    owner = [-1] * len(text)
    for token, (start, end) in enumerate(offsets):
        for char in range(start, min(end, len(text))):
            owner[char] = token
    first = next((token for token in owner if token >= 0), 0)
    previous = first
    for char, token in enumerate(owner):
        previous = token if token >= 0 else previous
        owner[char] = previous
    return owner


def _align_offsets(
    text: str, spans: Sequence[tuple[int, int]], tokenizer
) -> tuple[list[int], list[int]]:
    ids, offsets = tokenize_with_spans(tokenizer, text)
    if not ids:
        return [_fallback_token(tokenizer)], [0] * len(spans)
    owner = _covering_token(text, offsets)
    positions = []
    for start, end in spans:
        last_char = end - 1 if end > start else start - 1
        positions.append(owner[last_char] if last_char >= 0 else 0)
    return ids, positions


def _align_first(
    text: str, spans: Sequence[tuple[int, int]], tokenizer
) -> tuple[list[int], list[int]]:
    fallback = _fallback_token(tokenizer)
    ids = []
    for start, end in spans:
        pieces = tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
        ids.append(pieces[0] if pieces else fallback)
    return ids, list(range(len(spans)))


def _align_identity(
    text: str,
    spans: Sequence[tuple[int, int]],
    tokenizer,
    receiver_token_ids: Sequence[int] | None,
) -> tuple[list[int], list[int]]:
    if receiver_token_ids is not None:
        if len(receiver_token_ids) != len(spans):
            raise BadRequest(
                f"identity alignment got {len(receiver_token_ids)} token ids for "
                f"{len(spans)} receiver spans"
            )
        return list(receiver_token_ids), list(range(len(spans)))
    ids, offsets = tokenize_with_spans(tokenizer, text)
    if [tuple(span) for span in spans] != offsets:
        raise BadRequest(
            "identity alignment: the sharer tokenizes the text differently from the receiver "
            f"({len(offsets)} tokens vs {len(spans)} spans); use offsets or first"
        )
    return ids, list(range(len(spans)))


def align_positions(
    strategy: str,
    text: str,
    receiver_spans: Sequence[tuple[int, int]],
    sharer_tokenizer,
    receiver_token_ids: Sequence[int] | None = None,
) -> tuple[list[int], list[int]]:
    """Sharer token ids to prefill and, per receiver token, the sharer position to take.

    `receiver_token_ids` is only used by `identity`, where it skips re-tokenizing the text.
    """
    if strategy not in STRATEGIES:
        raise BadRequest(f"unknown alignment {strategy!r}; expected one of {list(STRATEGIES)}")
    spans = [(int(start), int(end)) for start, end in receiver_spans]
    _check_spans(text, spans)
    if strategy == "identity":
        return _align_identity(text, spans, sharer_tokenizer, receiver_token_ids)
    if strategy == "offsets":
        return _align_offsets(text, spans, sharer_tokenizer)
    return _align_first(text, spans, sharer_tokenizer)
