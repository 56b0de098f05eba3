"""Faithfulness (issue 12): the deterministic share of supported answer sentences, and the model judge
with constrained JSON output, retries and counted parse failures, on a fake generator, the real
SmolLM2 on llama.cpp (grammar) and a real fake OpenAI server on loopback (response_format)."""

from __future__ import annotations

import inspect
import json
from types import SimpleNamespace

import pytest

from fake_openai import fake_openai
from ragtune.errors import RagtuneError
from ragtune.evaluate.faithfulness import answer_sentences, faithfulness, summarize_faithfulness
from ragtune.evaluate.judge import JudgeFaithfulness, parse_verdicts, summarize_judge, verdict_schema
from ragtune.generate.base import Generation
from ragtune.generate.llamacpp import unavailable_reason

SOURCES = ["The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was completed in 1889 for "
           "the World's Fair.",
           "Big Ben is the nickname for the Great Bell of the clock at the Palace of Westminster in London."]
SUPPORTED = "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in 1889."
HALF = "The Eiffel Tower is a lattice tower in Paris. It was painted green by Napoleon in 1750."


def verdicts(*supported: bool) -> str:
    return json.dumps({f"sentence_{i}": s for i, s in enumerate(supported, 1)})


class FakeGenerator:
    """Replies from a list, in turn (the last one repeats); records every call."""

    name = "fake"

    def __init__(self, *replies):
        self.replies, self.calls = list(replies), []

    def generate(self, messages, max_new_tokens=256, temperature=0.0, **kw) -> Generation:
        self.calls.append((messages, dict(kw, max_new_tokens=max_new_tokens)))
        reply = self.replies[min(len(self.calls), len(self.replies)) - 1]
        if isinstance(reply, Exception):
            raise reply
        return Generation(text=reply, model=self.name)


# -- deterministic ------------------------------------------------------------------------------------
def test_fully_supported_answer_scores_one():
    result = faithfulness(SUPPORTED, SOURCES)
    assert result == {"faithfulness": 1.0, "sentences": 2, "supported": 2, "unsupported_sentences": []}


def test_one_invented_sentence_of_two_scores_half():
    result = faithfulness(HALF, SOURCES)
    assert (result["faithfulness"], result["sentences"], result["supported"]) == (0.5, 2, 1)
    assert result["unsupported_sentences"] == ["It was painted green by Napoleon in 1750."]


def test_citation_markers_are_ignored():
    """[n] markers, right or wrong, neither help nor hurt: the sentence is judged on its words."""
    cited = "The Eiffel Tower is a wrought-iron lattice tower in Paris [2]. It was completed in 1889 [7]."
    assert faithfulness(cited, SOURCES) == faithfulness(SUPPORTED, SOURCES)
    assert [s for s, _ in answer_sentences(cited)] == ["The Eiffel Tower is a wrought-iron lattice tower in Paris.",
                                                      "It was completed in 1889."]
    assert faithfulness("Rome [1]", SOURCES)["faithfulness"] == 0.0
    assert faithfulness("Paris [1]", SOURCES)["faithfulness"] == 1.0  # a short-phrase answer is one sentence


def test_a_wrong_number_is_unsupported_despite_the_overlap():
    assert faithfulness("The Eiffel Tower in Paris was completed in 1898.", SOURCES)["faithfulness"] == 0.0


def test_a_sentence_joining_the_sources_it_cites_is_supported():
    answer = "The Eiffel Tower is in Paris and Big Ben is the Great Bell at Westminster in London [1][2]."
    assert faithfulness(answer, SOURCES)["faithfulness"] == 1.0


@pytest.mark.parametrize("answer", ["", None, "   ", "I do not know.", "The sources do not contain the answer.",
                                    "Yes."])
def test_nothing_to_check_is_absent_not_perfect(answer):
    result = faithfulness(answer, SOURCES)
    assert result["faithfulness"] is None and result["sentences"] == 0


def test_hits_uncalibrated_embedders_and_summary():
    hits = [SimpleNamespace(text=t) for t in SOURCES]

    class OtherEmbedder:  # thresholds are calibrated for MiniLM only: any other is ignored, never called
        name = "some-other-embedder"

        def encode(self, texts):
            raise AssertionError("an uncalibrated embedder must not be used")

    assert faithfulness(HALF, hits, embedder=OtherEmbedder()) == faithfulness(HALF, SOURCES)
    rows = [faithfulness(SUPPORTED, SOURCES), faithfulness(HALF, SOURCES), faithfulness("", SOURCES)]
    assert summarize_faithfulness(rows) == {"faithfulness": 0.75, "faithfulness_scored": 2,
                                            "faithfulness_absent": 1}


# -- the judge, on a fake generator ----------------------------------------------------------------------
def test_bad_json_is_retried_and_counted():
    generator = FakeGenerator('{"sentence_1": true, "sentence_2": fals', verdicts(True, False))
    result = JudgeFaithfulness(generator, retries=2).score("Tell me about the tower.", HALF, SOURCES)
    assert result["judge_faithfulness"] == 0.5 and result["judge_supported"] == 1
    assert (result["judge_attempts"], result["judge_parse_failures"], result["judge_failed"]) == (2, 1, False)
    assert result["judge_unsupported_sentences"] == ["It was painted green by Napoleon in 1750."]
    first, second = generator.calls
    assert first[1]["json_schema"] == verdict_schema(2)  # offered to a generator that takes keywords
    prompt = first[0][-1]["content"]
    assert "[1] The Eiffel Tower" in prompt and "2. It was painted green" in prompt and "Question: Tell me" in prompt
    # the retry shows the model its broken reply and what was wrong with it
    assert second[0][2] == {"role": "assistant", "content": generator.replies[0]}
    assert "not valid JSON" in second[0][3]["content"]


def test_always_bad_output_fails_the_example_and_is_reported():
    generator = FakeGenerator("The first sentence is supported, the second is not.")
    judge = JudgeFaithfulness(generator, retries=2)
    failed = judge.score(None, HALF, SOURCES)
    assert failed["judge_failed"] is True and failed["judge_faithfulness"] is None
    assert failed["judge_attempts"] == failed["judge_parse_failures"] == 3 == len(generator.calls)
    assert "no JSON object" in failed["judge_error"]
    good = JudgeFaithfulness(FakeGenerator(verdicts(True, True))).score(None, SUPPORTED, SOURCES)
    nothing = judge.score(None, "I do not know.", SOURCES)
    assert nothing["judge_faithfulness"] is None and not nothing["judge_failed"] and nothing["judge_attempts"] == 0
    assert summarize_judge([good, failed, nothing, None]) == {
        "judge_faithfulness": 1.0, "judged": 1, "judge_failed": 1, "judge_parse_failures": 3, "judge_errors": 0,
        "judge_no_sentences": 1}


@pytest.mark.parametrize("reply, problem", [
    (verdicts(True), "sentence_2: Field required"),
    ('{"sentence_1": "yes", "sentence_2": true}', "sentence_1: Input should be a valid boolean"),
    ('{"sentence_1": 1, "sentence_2": true}', "sentence_1: Input should be a valid boolean"),
    ('{"verdicts": [{"sentence": 1, "supported": true}, {"sentence": 2, "supported": true}]}', "Field required"),
    ("[true, false]", "no JSON object"),
    ("", "no JSON object"),
])
def test_replies_not_of_the_schema_are_rejected(reply, problem):
    with pytest.raises(ValueError, match=problem):
        parse_verdicts(reply, 2)


def test_code_fence_and_prose_are_tolerated():
    fenced = f"Here are the verdicts:\n```json\n{verdicts(False, True)}\n```\nHope this helps."
    assert parse_verdicts(fenced, 2) == [False, True]
    shuffled = '{"sentence_2": true, "reason": "the second is stated", "sentence_1": false}'
    assert parse_verdicts(shuffled, 2) == [False, True]


def test_generator_errors_are_counted_and_keywords_only_offered_when_taken():
    class Plain:  # no json_schema keyword: nothing to constrain with, so it is not passed
        name = "plain"

        def __init__(self):
            self.calls = 0

        def generate(self, messages, *, max_new_tokens=256, temperature=0.0):
            self.calls += 1
            if self.calls == 1:
                raise RagtuneError("server hiccup")
            return Generation(text=verdicts(True))

    result = JudgeFaithfulness(Plain(), retries=1).score(None, "Paris [1]", SOURCES)
    assert result["judge_faithfulness"] == 1.0 and result["judge_errors"] == 1 and result["judge_parse_failures"] == 0
    unreachable = FakeGenerator(RagtuneError("cannot reach the server"))
    down = JudgeFaithfulness(unreachable, retries=1).score(None, HALF, SOURCES)
    assert down["judge_failed"] and down["judge_errors"] == 2 and "cannot reach" in down["judge_error"]


def test_sources_are_cut_to_fit_the_context():
    class Small(FakeGenerator):
        context_window = 400

        def count_tokens(self, text):
            return len(text.split())

    generator = Small(verdicts(True, True))
    long_sources = [SOURCES[0] + " filler" * 2000, SOURCES[1]]
    result = JudgeFaithfulness(generator).score(None, SUPPORTED, long_sources)
    assert result["judge_sources_truncated"] is True and result["judge_faithfulness"] == 1.0
    prompt = generator.calls[0][0]
    assert sum(generator.count_tokens(m["content"]) for m in prompt) <= 400 - generator.calls[0][1]["max_new_tokens"]


# -- constrained output on the real backends ---------------------------------------------------------------
def test_every_backend_takes_the_json_schema_keyword():
    from ragtune.generate.llamacpp import LlamaCppGenerator
    from ragtune.generate.local import LocalGenerator
    from ragtune.generate.remote import OpenAICompatibleGenerator

    for cls in (LlamaCppGenerator, LocalGenerator, OpenAICompatibleGenerator):
        assert "json_schema" in inspect.signature(cls.generate).parameters, cls


@pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))
def test_llamacpp_grammar_constrains_smollm2_to_the_schema():
    from ragtune.generate.llamacpp import LlamaCppGenerator
    from ragtune.generate.llamacpp_engine import Request

    generator = LlamaCppGenerator("SmolLM2-135M-Instruct", threads=1).load()
    messages = [{"role": "user", "content": "Is the sky green? Is grass green? Is snow black? Answer in JSON."}]
    free = generator.generate(messages, max_new_tokens=40)
    with pytest.raises(ValueError):  # unconstrained, the 135M model writes prose (that is why a grammar)
        parse_verdicts(free.text, 3)
    result = generator.generate(messages, max_new_tokens=100, json_schema=verdict_schema(3))
    assert result.finish_reason == "stop"
    assert len(parse_verdicts(result.text, 3)) == 3
    judged = JudgeFaithfulness(generator).score("What is the Eiffel Tower?", HALF, SOURCES)
    assert judged["judge_failed"] is False and judged["judge_parse_failures"] == 0
    assert judged["judge_faithfulness"] in (0.0, 0.5, 1.0)
    # a grammar llama.cpp cannot parse fails its request, not the engine
    tokens, _ = generator.encode_chat(messages)
    broken = generator._engine.submit(Request(tokens=tokens, max_new_tokens=4, grammar='root ::= ("a"'))
    kind, error = broken.events.get(timeout=60)
    assert kind == "error" and "grammar" in str(error)
    assert generator.generate(messages, max_new_tokens=4).completion_tokens == 4


def test_openai_endpoint_receives_response_format():
    pytest.importorskip("openai")
    from ragtune.generate import make_generator

    with fake_openai(reply=verdicts(True, False)) as (url, seen):
        generator = make_generator("served-model", base_url=url, max_retries=0)
        result = JudgeFaithfulness(generator).score("Tell me about the tower.", HALF, SOURCES)
        generator.generate([{"role": "user", "content": "hi"}], max_new_tokens=8)
    assert result["judge_faithfulness"] == 0.5 and result["judge_parse_failures"] == 0
    assert seen[0]["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "faithfulness_verdicts", "schema": verdict_schema(2), "strict": True}}
    assert "response_format" not in seen[1]  # only asked for when a schema is given
