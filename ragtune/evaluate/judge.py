"""Faithfulness judged by a model: per answer sentence, do the sources support it?

Why a judge beside the deterministic metric (faithfulness.py): word overlap cannot tell "X treats
colds" from "X does not work against colds"; a capable model can. The judge sees the same sentences
the deterministic metric scores, numbered, and must answer with JSON of a fixed schema,
{"sentence_1": true, "sentence_2": false, ...}: one required boolean per sentence, in order. Keyed
rather than a list of {"sentence": n, "supported": b}: under a grammar SmolLM2 filled such a list
with "sentence": 1 three times; required keys make every verdict appear exactly once on every
backend (OpenAI's strict mode included), so the model only chooses the booleans.

The output is constrained where the backend can: a GBNF grammar on llama.cpp, `response_format`
json_schema on an OpenAI-compatible endpoint; transformers cannot, so there the reply is only parsed.
Either way it is parsed (a code fence or prose around the object tolerated) and validated with
pydantic; a reply that fails is retried (`retries` times, told what was wrong). Every failed attempt
counts in `judge_parse_failures`, an example whose attempts all fail is `judge_failed` and gets no
judge score; both are reported, never silently dropped, and never counted as a score.
"""

from __future__ import annotations

import inspect
import json
import logging
import re

from functools import lru_cache

from pydantic import ConfigDict, StrictBool, ValidationError, create_model

from ..errors import RagtuneError
from .faithfulness import answer_sentences, source_texts

log = logging.getLogger(__name__)

SYSTEM = ("You check an answer against the sources it was written from. For each numbered sentence of the "
          "answer, decide whether the sources state it or directly imply it (supported: true), or not "
          "(supported: false: the sources do not say it, or say something else). Judge only by the sources, "
          "not by what you know yourself. Reply with JSON only, one verdict per sentence, in order: "
          '{"sentence_1": true, "sentence_2": false}')
FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL | re.IGNORECASE)
TEMPLATE_TOKENS = 32  # chat-template markup around the messages, kept free when fitting the prompt


def _keys(n: int) -> list[str]:
    return [f"sentence_{i}" for i in range(1, n + 1)]


def verdict_schema(n: int) -> dict:
    """The JSON schema of a reply for `n` sentences: {"sentence_1": bool, ..., "sentence_n": bool}."""
    return {"title": "faithfulness_verdicts", "type": "object",
            "properties": {key: {"type": "boolean"} for key in _keys(n)},
            "required": _keys(n), "additionalProperties": False}


@lru_cache(maxsize=64)
def _verdicts_model(n: int):
    """The pydantic model of verdict_schema(n). Strict booleans: "yes" or 1 is not a verdict; other
    keys (a "reason" an unconstrained model adds) are ignored."""
    return create_model(f"Verdicts{n}", __config__=ConfigDict(extra="ignore"),
                        **{key: (StrictBool, ...) for key in _keys(n)})


def parse_verdicts(text: str, n: int) -> list[bool]:
    """The verdicts of a reply, in sentence order; ValueError saying what is wrong otherwise."""
    fenced = FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0:
        raise ValueError("no JSON object in the reply")
    try:
        data = json.loads(body[start:end + 1] if end > start else body[start:])
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        parsed = _verdicts_model(n).model_validate(data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise ValueError(f"JSON not of the schema ({problems})") from None
    return [getattr(parsed, key) for key in _keys(n)]


def _accepts(function, keyword: str) -> bool:
    """Whether `function` takes `keyword` (by name or **kwargs): generators that cannot constrain
    their output need not know the keyword."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind is p.VAR_KEYWORD for p in parameters)


class JudgeFaithfulness:
    """Judge answers with `generator` (any ragtune generator, or an object with the same `generate`).

    `score` is safe to call from several threads at once: it keeps no state between calls.
    """

    def __init__(self, generator, *, retries: int = 2, temperature: float = 0.0):
        self.generator, self.retries, self.temperature = generator, max(0, int(retries)), temperature
        self.constrained = _accepts(generator.generate, "json_schema")

    def messages(self, question: str | None, sentences: list[str], sources: list[str]) -> list[dict]:
        listed = "\n\n".join(f"[{i}] {text}" for i, text in enumerate(sources, 1)) or "(no sources)"
        numbered = "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, 1))
        asked = f"Question: {question}\n\n" if question else ""
        return [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Sources:\n\n{listed}\n\n{asked}Answer sentences:\n{numbered}\n\n"
                                            f"Give one verdict for each of the {len(sentences)} sentences."}]

    def _fit(self, question, sentences, sources, max_new_tokens) -> tuple[list[dict], bool]:
        """The messages, with the sources cut in proportion when the prompt would not fit the context."""
        messages = self.messages(question, sentences, sources)
        window = getattr(self.generator, "context_window", None)
        count = getattr(self.generator, "count_tokens", None)
        if not window or count is None or not sources:
            return messages, False
        budget = int(window) - max_new_tokens - TEMPLATE_TOKENS
        used = sum(count(m["content"]) for m in messages)
        if used <= budget:
            return messages, False
        source_tokens = max(1, sum(count(s) for s in sources))
        share = max(0.0, (budget - (used - source_tokens)) / source_tokens) * 0.95
        log.info("judge prompt is %d tokens, over the %d that fit: sources cut to %.0f%%", used, budget, 100 * share)
        return self.messages(question, sentences, [s[:int(len(s) * share)] for s in sources]), True

    def score(self, question: str | None, answer: str | None, sources: list) -> dict:
        """Verdicts for one answer. `sources`: the texts (or hits with .text) the model was given.

        judge_faithfulness is None when the answer has no checkable sentence (judge_sentences 0) or
        when every attempt failed (judge_failed True); judge_parse_failures counts failed attempts.
        """
        sentences = [plain for plain, _ in answer_sentences(answer)]
        result = {"judge_faithfulness": None, "judge_sentences": len(sentences), "judge_supported": None,
                  "judge_attempts": 0, "judge_parse_failures": 0, "judge_errors": 0, "judge_failed": False,
                  "judge_error": None, "judge_unsupported_sentences": [], "judge_sources_truncated": False}
        if not sentences:
            return result
        n = len(sentences)
        schema = verdict_schema(n)
        max_new_tokens = 32 + 16 * n  # a verdict is about 7 tokens; room for a fence from a free model
        messages, result["judge_sources_truncated"] = self._fit(question, sentences, source_texts(sources),
                                                                max_new_tokens)
        options = {"max_new_tokens": max_new_tokens, "temperature": self.temperature}
        if self.constrained:
            options["json_schema"] = schema
        for _ in range(1 + self.retries):
            result["judge_attempts"] += 1
            try:
                reply = self.generator.generate(messages, **options).text
            except RagtuneError as exc:  # the endpoint or model failed this attempt: counted, retried
                result["judge_errors"] += 1
                result["judge_error"] = str(exc)
                log.debug("judge attempt failed: %s", exc)
                continue
            try:
                verdicts = parse_verdicts(reply, n)
            except ValueError as exc:
                result["judge_parse_failures"] += 1
                result["judge_error"] = f"{exc}: {reply[:200]!r}"
                log.debug("judge reply rejected (%s): %r", exc, reply[:500])
                # greedy decoding would repeat itself: show the model its reply and what was wrong
                messages = [*messages[:2], {"role": "assistant", "content": reply[:2000]},
                            {"role": "user", "content": f"That reply is not valid: {exc}. Reply with only the "
                                                        f"JSON object, one verdict for each of the {n} sentences."}]
                continue
            result.update(judge_faithfulness=round(sum(verdicts) / n, 4), judge_supported=sum(verdicts),
                          judge_error=None,
                          judge_unsupported_sentences=[s for s, ok in zip(sentences, verdicts) if not ok])
            return result
        result["judge_failed"] = True
        log.warning("faithfulness judge failed after %d attempts: %s", result["judge_attempts"], result["judge_error"])
        return result


def summarize_judge(results: list[dict | None]) -> dict:
    """Mean judged faithfulness over the examples the judge scored, with what it could not score:
    judge_failed (all attempts failed), judge_parse_failures and judge_errors (failed attempts, all
    examples), judge_no_sentences (answers with nothing to check)."""
    results = [r for r in results if r]
    scored = [r["judge_faithfulness"] for r in results if r.get("judge_faithfulness") is not None]
    return {"judge_faithfulness": round(sum(scored) / len(scored), 4) if scored else None,
            "judged": len(scored),
            "judge_failed": sum(bool(r.get("judge_failed")) for r in results),
            "judge_parse_failures": sum(r.get("judge_parse_failures", 0) for r in results),
            "judge_errors": sum(r.get("judge_errors", 0) for r in results),
            "judge_no_sentences": sum(1 for r in results if not r.get("judge_sentences"))}
