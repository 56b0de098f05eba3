"""Token-exact, boundary-aware chunking with an overlap that is always honoured.

Hand-written because no library does all of: count tokens with the embedder's own tokenizer,
prefer paragraph > sentence > word boundaries, keep exact character offsets into the cleaned
text, and stream arbitrarily long input through a bounded window. (LangChain's and LlamaIndex's
splitters either count characters, lose offsets, or re-tokenize whole documents in memory.)
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from itertools import chain, groupby
from dataclasses import dataclass, field

# Characters of text tokenized at once when streaming; big enough to amortise the tokenizer call,
# small enough that offsets for one window stay a few MB.
WINDOW_CHARS = 200_000
_SENTENCE_END = ".!?;:。！？"


@dataclass
class Chunk:
    text: str
    start: int  # character offset into the cleaned document text
    end: int
    token_count: int
    page: int | None = None
    metadata: dict = field(default_factory=dict)


def _token_spans(tokenizer, text: str) -> list[tuple[int, int]]:
    encoded = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False,
        verbose=False,
    )
    # Some tokenizers report empty spans for added tokens; drop them.
    return [(s, e) for s, e in encoded["offset_mapping"] if e > s]


def _boundary_score(text: str, spans: list[tuple[int, int]], j: int) -> int:
    """How good a place is the gap before token j to end a chunk (higher is better)."""
    gap = text[spans[j - 1][1] : spans[j][0]]
    if "\n\n" in gap:
        return 4
    if "\n" in gap:
        return 3
    if gap and text[spans[j - 1][1] - 1] in _SENTENCE_END:
        return 2
    return 1 if gap else 0


def _plan(text, spans, first, size, overlap, final):
    """Yield (start_token, end_token) chunks from `first`; stop early near a non-final window end."""
    n = len(spans)
    i = first
    while i < n:
        limit = i + size
        if limit >= n:
            if not final:
                return i  # let the next window decide where this chunk ends
            yield (i, n)
            return None
        best, best_score = limit, -1
        for j in range(limit, i + max(1, size // 2) - 1, -1):
            score = _boundary_score(text, spans, j)
            if score > best_score:
                best, best_score = j, score
                if score == 4:
                    break
        yield (i, best)
        nxt = best - overlap if overlap else best
        # Start the next chunk at a word start; moving back only adds overlap.
        while overlap and nxt > i + 1 and not text[spans[nxt - 1][1] : spans[nxt][0]]:
            nxt -= 1
        i = max(nxt, i + 1)
    return None


def _chunks_of_window(text, spans, size, overlap, final, base, page_at, metadata):
    """Chunks of one window, plus the char offset (window-relative) where unfinished text starts."""
    chunks: list[Chunk] = []
    planner = _plan(text, spans, 0, size, overlap, final)
    rest = None
    while True:
        try:
            a, b = next(planner)
        except StopIteration as stop:
            rest = stop.value
            break
        start, end = spans[a][0], spans[b - 1][1]
        chunks.append(
            Chunk(text[start:end], base + start, base + end, b - a, page_at(base + start), dict(metadata))
        )
    cut = spans[rest][0] if rest is not None else None
    return chunks, cut


def chunk_segments(
    pieces: Iterable[str],
    tokenizer,
    size: int,
    overlap: int,
    *,
    base_offset: int = 0,
    page_at=lambda _offset: None,
    metadata: dict | None = None,
) -> Iterator[Chunk]:
    """Chunk a stream of text pieces that form one continuous text starting at `base_offset`.

    Memory stays bounded by WINDOW_CHARS plus one chunk, whatever the total length.
    """
    metadata = metadata or {}
    buffer = ""
    base = base_offset
    iterator = iter(pieces)
    exhausted = False
    need = WINDOW_CHARS
    while not exhausted or buffer:
        while not exhausted and len(buffer) < need:
            try:
                buffer += next(iterator)
            except StopIteration:
                exhausted = True
        if not buffer:
            break
        spans = _token_spans(tokenizer, buffer)
        if not spans:
            base += len(buffer)
            buffer = ""
            continue
        chunks, cut = _chunks_of_window(buffer, spans, size, overlap, exhausted, base, page_at, metadata)
        yield from chunks
        # A window that could not place a single chunk needs more text before trying again.
        need = need * 2 if not chunks else WINDOW_CHARS
        if cut is None:
            base += len(buffer)
            buffer = ""
        else:
            base += cut
            buffer = buffer[cut:]


def chunk_text(text: str, tokenizer, size: int, overlap: int, **kwargs) -> list[Chunk]:
    """Chunk one in-memory text (convenience over `chunk_segments`)."""
    return list(chunk_segments([text], tokenizer, size, overlap, **kwargs))


def document_chunks(segments, tokenizer, size: int, overlap: int) -> Iterator:
    """Chunks of one document; sections (new_section) never share a chunk; pages are tracked."""
    state = {"section": 0, "offset": 0}
    page_offsets: list[int] = []
    page_numbers: list[int] = []

    def keyed():
        for segment in segments:
            if segment.new_section:
                state["section"] += 1
            yield state["section"], segment

    def page_at(offset: int):
        index = bisect.bisect_right(page_offsets, offset) - 1
        return page_numbers[index] if index >= 0 else None

    for _, group in groupby(keyed(), key=lambda item: item[0]):
        group = iter(group)
        _, first = next(group)

        def pieces(first=first, group=group):
            for segment in chain([first], (s for _, s in group)):
                if segment.page is not None:
                    page_offsets.append(state["offset"])
                    page_numbers.append(segment.page)
                state["offset"] += len(segment.text)
                yield segment.text

        yield from chunk_segments(
            pieces(), tokenizer, size, overlap, base_offset=state["offset"], page_at=page_at,
            metadata=first.metadata or {},
        )
