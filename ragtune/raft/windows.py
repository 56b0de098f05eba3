"""RAFT documents: the knowledge base's documents re-cut into windows of N tokens of the target model.

Why re-cut instead of using the KB's chunks: the KB chunks by the *embedder's* tokens (MiniLM's
wordpieces), but a RAFT example must fit the *target model's* training length: (k + 1) documents,
the question and the answer. Counting the target's own tokens makes `--chunk-tokens` a real budget
(gorilla's raft.py counts characters and calls them tokens). Windows end at the best boundary in
their last half, with ingest's preferences (paragraph > line > sentence > word), and do not overlap,
so every piece of text is in exactly one window and "the oracle or a duplicate of it" is well defined.

Documents are re-assembled from the store's chunks by their character offsets (the store keeps
chunks, not whole texts); a gap between chunks is whitespace the chunker skipped and is restored as
a paragraph break (>= 2 characters) or a space, so window boundaries still prefer paragraphs.

An example's context is drawn from the windows (`choose_context`): the oracle, or every oracle of a
multi-hop question (HotpotQA's two supporting paragraphs), with probability P, and distractors, shuffled. Distractors are by default *hard negatives*: what the knowledge base's own retriever returns for the
question, mapped to the RAFT windows they overlap. Those are the documents a RAFT model will meet at
inference, where retrieval brings look-alikes, not random pages; training on random distractors
teaches it to ignore only the easy ones. Random distractors remain an option, and fill in when
retrieval runs out. A distractor is never the oracle nor the same text (see WindowTable.same_text),
and never repeats within an example. Without the oracles the context holds k + (number of oracles)
distractors, so every example shows the same number of documents (as in the RAFT paper's setup and
gorilla's raft.py).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, RagtuneError

logger = logging.getLogger(__name__)
_NON_WORD = re.compile(r"[\W_]+")
SHINGLE = 5
BLOCK_CHARS = 100_000  # characters tokenised at once
DUPLICATE_JACCARD = 0.9  # character-shingle similarity at which two windows count as the same text


@dataclass
class Window:
    """One RAFT document; `title`/`source`/`text` make it renderable like a retrieval hit."""

    index: int
    key: str  # "<source>#<n>": stable across runs while the KB is unchanged
    doc_id: str
    source: str
    title: str | None
    start: int
    end: int
    text: str
    tokens: int

    def as_dict(self) -> dict:
        return {"key": self.key, "doc_id": self.doc_id, "source": self.source, "title": self.title}


class JsonTokenizer:
    """A `tokenizer.json` run by the `tokenizers` library (0.1 s to load) rather than transformers (3 s):
    RAFT needs only token counts and character offsets, which this gives exactly as the fast HF
    tokenizer would (it is the same file). Called like a transformers tokenizer."""

    is_fast = True

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.name_or_path = str(self.path.parent)
        self._tokenizer = Tokenizer.from_file(str(self.path))

    def __call__(self, text: str, *, add_special_tokens: bool = True, return_offsets_mapping: bool = False, **_):
        encoding = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        result = {"input_ids": encoding.ids}
        if return_offsets_mapping:
            result["offset_mapping"] = encoding.offsets
        return result

    def save_pretrained(self, directory) -> None:
        import shutil

        Path(directory).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path, Path(directory) / "tokenizer.json")


def load_target_tokenizer(model: str):
    """The target model's tokenizer with character offsets, without loading weights.

    A folder's (or a packaged model's cached conversion's) `tokenizer.json` is read directly; a
    packaged GGUF model without a conversion uses the tokenizer inside the GGUF file (about 7 s).
    """
    from ..models.cache import conversion_dir, default_cache_dir
    from ..models.gguf import gguf_file, is_gguf_path
    from ..models.registry import find_model, is_local_model_dir

    spec = find_model(str(model))
    gguf = is_gguf_path(model) or (spec is not None and spec.format in ("gguf", "gguf-parts"))
    if not gguf and not is_local_model_dir(model):
        raise ConfigError(f"--target-model {model!r} is neither a packaged chat model nor a local model directory; "
                          "pass the model you will fine-tune (e.g. SmolLM2-135M-Instruct or a folder)")
    folder = Path(model).expanduser() if is_local_model_dir(model) else (
        conversion_dir(spec, default_cache_dir()) if spec is not None else None)
    try:
        if folder is not None and (folder / "tokenizer.json").is_file():
            return JsonTokenizer(folder / "tokenizer.json")
        from transformers import AutoTokenizer

        from ..runtime import quiet_transformers

        quiet_transformers()
        if folder is not None:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        else:
            path = gguf_file(model)
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except RagtuneError:
        raise
    except Exception as exc:  # noqa: BLE001 - tokenizers and transformers raise many types for a bad file
        raise ConfigError(f"--target-model {model}: cannot load its tokenizer ({exc}); pass a model directory "
                          "with tokenizer files or a packaged model name") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"--target-model {model}: its tokenizer cannot report character offsets (not a fast "
                          "tokenizer); use a model with a tokenizer.json")
    return tokenizer


def reassemble(rows: list) -> str:
    """One document's text from its chunks (ordered by position), overlaps merged, gaps restored."""
    text, end = [], 0
    for row in rows:
        start, stop, chunk = row["start_char"], row["end_char"], row["text"]
        if stop <= end:
            continue
        if start > end:
            gap = start - end
            text.append("\n" * gap if gap >= 2 else " ")
            end = start
        text.append(chunk[end - start:])
        end = stop
    return "".join(text)


def _gap_score(text: str, spans: list[tuple[int, int]], j: int) -> int:
    """How good a cut before token j is: paragraph 4 > line 3 > sentence end 2 > word 1 > mid-word 0.

    The whitespace around the cut is examined wherever the tokenizer put it: WordPiece leaves it
    between tokens, byte-level BPE (SmolLM2, Qwen) starts the next token with it, so a rule that only
    looks between token spans (as ingest's chunker does) sees no gap at all with the target's tokens.
    """
    a = b = spans[j][0]
    while a > spans[j - 1][0] and text[a - 1].isspace():
        a -= 1
    while b < spans[j][1] and text[b].isspace():
        b += 1
    gap = text[a:b]
    if gap.count("\n") >= 2:
        return 4
    if "\n" in gap:
        return 3
    if gap and a > 0 and text[a - 1] in ".!?;:\u3002\uff01\uff1f":
        return 2
    return 1 if gap else 0


def cut_windows(text: str, tokenizer, size: int) -> list[tuple[int, int, int]]:
    """(start, end, tokens) of windows of at most `size` tokens covering `text`, no overlap; each ends at
    the best boundary in its last half (see _gap_score) and is stripped of surrounding whitespace.

    `tokens` is the window's count on its own, which is how it is rendered in a prompt; it can exceed
    its count inside the document by a token or two (a word that lost its leading space splits
    differently), so a window over `size` on its own is cut again a little shorter.
    """
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = [(s, e) for s, e in encoded["offset_mapping"] if e > s]
    windows, i, n = [], 0, len(spans)
    while i < n:
        limit = size
        while True:
            j = n
            if n - i > limit:
                best = -1
                for candidate in range(i + limit, i + max(1, limit // 2) - 1, -1):
                    score = _gap_score(text, spans, candidate)
                    if score > best:
                        j, best = candidate, score
                        if score == 4:
                            break
            start, end = spans[i][0], spans[j - 1][1]
            piece = text[start:end]
            start, end = start + len(piece) - len(piece.lstrip()), end - (len(piece) - len(piece.rstrip()))
            tokens = len(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
            if tokens <= size or j - i <= 1:
                break
            limit = min(limit - 1, j - i - 1)
        if end > start:
            windows.append((start, end, tokens))
        i = j
    return windows


def _blocks(text: str):
    """(offset, block) pieces of at most BLOCK_CHARS, cut at a paragraph (else a space): a huge document
    is tokenised a block at a time, and a paragraph break is where a window would end anyway."""
    start = 0
    while start < len(text):
        end = min(len(text), start + BLOCK_CHARS)
        if end < len(text):
            cut = text.rfind("\n\n", start + BLOCK_CHARS // 2, end)
            cut = cut if cut >= 0 else text.rfind(" ", start + BLOCK_CHARS // 2, end)
            end = cut + 1 if cut >= 0 else end
        yield start, text[start:end]
        start = end


def load_windows(store, tokenizer, size: int) -> list[Window]:
    """Every document of the store cut into windows of at most `size` target tokens, by source order."""
    windows: list[Window] = []
    rows_of_doc: list = []

    def flush():
        if not rows_of_doc:
            return
        first = rows_of_doc[0]
        text = reassemble(rows_of_doc)  # index i of `text` is character offset i of the document
        n = 0
        for offset, block in _blocks(text):
            for start, end, tokens in cut_windows(block, tokenizer, size):
                windows.append(Window(len(windows), f"{first['source']}#{n}", first["doc_id"], first["source"],
                                      first["title"], offset + start, offset + end, block[start:end], tokens))
                n += 1
        rows_of_doc.clear()

    for row in store.chunk_rows():
        if rows_of_doc and row["source"] != rows_of_doc[0]["source"]:
            flush()
        rows_of_doc.append(row)
    flush()
    logger.info("%d documents' text cut into %d windows of <= %d target tokens", len({w.source for w in windows}),
                len(windows), size)
    return windows


def fingerprint(windows: list[Window]) -> str:
    """A hash of the windows: a resumed build must see exactly the documents the first run saw."""
    digest = hashlib.sha256()
    for window in windows:
        digest.update(f"{window.key}\x00{window.doc_id}\x00{window.text}\x01".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _normal(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def _shingles(text: str) -> set[str]:
    return {text[i:i + SHINGLE] for i in range(max(1, len(text) - SHINGLE + 1))} if text else set()


class WindowTable:
    """Lookups over the windows: by source offset (retrieval hits), and "is this the same text"."""

    def __init__(self, windows: list[Window]):
        self.windows = windows
        self.by_source: dict[str, list[Window]] = {}
        for window in windows:
            self.by_source.setdefault(window.source, []).append(window)
        self._normal: dict[int, str] = {}

    def for_hit(self, hit) -> Window | None:
        """The window overlapping a retrieved chunk the most (same document), or None."""
        best, overlap = None, 0
        for window in self.by_source.get(hit.source, ()):
            shared = min(window.end, hit.end) - max(window.start, hit.start)
            if shared > overlap:
                best, overlap = window, shared
        return best

    def normal(self, window: Window) -> str:
        """Lowercase words of a window (cached for KB windows; an ad-hoc oracle has index -1)."""
        if window.index < 0:
            return _normal(window.text)
        if window.index not in self._normal:
            self._normal[window.index] = _normal(window.text)
        return self._normal[window.index]

    def same_text(self, a: Window, b: Window) -> bool:
        """Equal after normalisation, one inside the other, or >= 0.9 character-shingle Jaccard."""
        if a is b:
            return True
        x, y = self.normal(a), self.normal(b)
        if not x or not y:
            return x == y
        if x in y or y in x:
            return True
        sx, sy = _shingles(x), _shingles(y)
        return len(sx & sy) / len(sx | sy) >= DUPLICATE_JACCARD


# -- contexts ------------------------------------------------------------------------------
KINDS = ("hard", "random")
RANDOM_TRIES = 50  # random draws per distractor before falling back to a full shuffled scan


@dataclass
class Context:
    documents: list[Window]  # in prompt order
    oracle_present: bool
    hard: int = 0
    random: int = 0


def search_depth(k: int) -> int:
    """Hits to ask the retriever for: the oracle and near-duplicates take some of the top places."""
    return min(1000, 3 * (k + 1) + 10)


def required_windows(k: int, p: float) -> int:
    """Windows a build needs: k + 1 when the oracle is always present, k + 2 when it may be absent."""
    return k + 1 + (1 if p < 1 else 0)


def choose_context(table: WindowTable, oracles: Window | list[Window], question: str, *, k: int, p: float, kind: str,
                   rng: random.Random, search: Callable[[str], list] | None = None) -> Context:
    """Draw one example's documents; every random choice comes from `rng` (seeded per example).
    All oracles are present together (with probability P) or absent together: a multi-hop question
    is answerable only from all of them."""
    oracles = [oracles] if isinstance(oracles, Window) else list(oracles)
    present = rng.random() < p
    need = k if present else k + len(oracles)
    chosen: list[Window] = []

    def take(window: Window | None) -> bool:
        if window is None or any(table.same_text(window, c) for c in (*oracles, *chosen)):
            return False
        chosen.append(window)
        return True

    hard = 0
    if kind == "hard" and search is not None and need:
        for hit in search(question):
            if take(table.for_hit(hit)):
                hard += 1
                if len(chosen) == need:
                    break
    windows = table.windows
    for _ in range(RANDOM_TRIES * (need - len(chosen))):
        if len(chosen) >= need:
            break
        take(windows[rng.randrange(len(windows))])
    if len(chosen) < need:
        for window in rng.sample(windows, len(windows)):
            if take(window) and len(chosen) == need:
                break
    if len(chosen) < need:
        names = ", ".join(repr(o.key) for o in oracles)
        raise ConfigError(f"only {len(chosen)} documents differ from the oracle {names}, but the example needs "
                          f"{need} distractors; lower --k, or add documents to the knowledge base")
    documents = chosen + (oracles if present else [])
    rng.shuffle(documents)
    return Context(documents, present, hard, len(chosen) - hard)
