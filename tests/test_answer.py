"""Grounded answers: citations checked against the given sources, 'not found', budgets, endpoints."""

from __future__ import annotations

import json

import pytest

from conftest import kb_of_texts, run_cli
from fake_openai import fake_openai
from ragtune.answer.citations import check_citations
from ragtune.answer.prompt import build_prompt
from ragtune.answer.pipeline import NOT_FOUND_ANSWER, ask
from ragtune.errors import ConfigError
from ragtune.generate import make_generator
from ragtune.generate.remote import GenerationError

DOCS = {
    "festival.txt": "The Zorblat festival is held in the town of Kremsville every March. Visitors eat smoked plums.",
    "bridge.txt": "The Halvard bridge crosses the river Otter. It was finished in 1921 and is painted green.",
    "orchard.txt": "Quince orchards need well drained soil and a cold winter to set fruit reliably.",
}


@pytest.fixture(scope="module")
def small_kb(tmp_path_factory):
    base = kb_of_texts(tmp_path_factory.mktemp("answer"), DOCS)
    yield base
    base.close()


@pytest.fixture(scope="module")
def smollm2():
    return make_generator("SmolLM2-135M-Instruct", threads=2).load()


class Hit:
    def __init__(self, n):
        self.doc_id, self.source, self.chunk_id, self.start, self.end, self.page, self.title = f"d{n}", f"s{n}", n, 0, 5, None, None
        self.text = f"text {n}"


def test_citation_check_maps_valid_flags_unknown_and_uncited():
    sources = [Hit(1), Hit(2)]
    sources[0].text = "The festival is held in Kremsville every March."
    sources[1].text = "Smoked plums are eaten by visitors at the festival."
    check = check_citations("Kremsville hosts the festival [1]. It runs every March [1, 3]. Plums are smoked there too.", sources)
    assert [c.n for c in check.citations] == [1, 2] and check.citations[0].doc_id == "d1"
    assert not check.citations[0].inferred and check.citations[1].inferred  # sentence 3 matched to source 2
    assert check.unknown == [3]
    assert check.uncited_sentences == ["Plums are smoked there too."]
    assert [s.status for s in check.sentences] == ["supported", "supported", "inferred"]
    assert not check.grounded  # an unknown citation
    assert check_citations("It is Kremsville [1].", sources).grounded
    wrong = check_citations("It is Kremsville [2].", sources)  # [2] exists but says nothing about Kremsville
    assert wrong.cited_unsupported_sentences == ["It is Kremsville [2]."] and not wrong.grounded
    vague = check_citations("Quantum chromodynamics explains everything here.", sources)
    assert vague.unsupported_sentences and not vague.grounded


def test_answer_from_real_model_cites_the_document_that_holds_it(small_kb, smollm2):
    result = ask(small_kb, "Where is the Zorblat festival held?", smollm2, k=3, max_new_tokens=40)
    assert result.found
    assert result.prompt.sources[0].source.endswith("festival.txt")  # retrieval put it first
    assert "Kremsville" in result.answer
    # SmolLM2-135M often answers without writing [n]; then the checker matches each sentence to a source. It
    # also adds facts of its own ("held in Kremsville, Germany."): such a sentence is unsupported, and says why.
    assert result.check.sentences, result.answer
    for sentence in result.check.sentences:
        assert result.prompt.sources[sentence.source - 1].source.endswith("festival.txt"), result.answer
        # what no source supports is listed, with the reason, under `unsupported`
        assert sentence.status in ("supported", "inferred") or sentence.text in [u["text"] for u in result.unsupported]
    cited = {c.source.rsplit("/", 1)[-1] for c in result.check.citations}
    assert cited <= {"festival.txt"}, result.answer
    data = result.as_dict()
    assert set(data["sentences"][0]) >= {"text", "status", "cited", "support_score"}
    assert "Zorblat" in data["prompt"] and data["timings"]["completion_tokens"] > 0


def test_no_relevant_documents_says_so_without_generating(small_kb):
    class Exploding:
        name, context_window = "never-called", 2048

        def generate(self, *a, **k):
            raise AssertionError("the model must not be asked")

    result = ask(small_kb, "What is the boiling point of liquid nitrogen in kelvin?", Exploding())
    assert not result.found and result.answer == NOT_FOUND_ANSWER and result.relevance < 0.3


def test_budget_keeps_whole_chunks_and_refuses_an_impossible_prompt(small_kb, smollm2):
    hits = small_kb.search("festival bridge orchard", 3)
    tight = make_generator("SmolLM2-135M-Instruct", threads=2, context_window=190)
    prompt = build_prompt("Where is the festival?", hits, tight, max_new_tokens=40)
    assert 0 < len(prompt.sources) < 3 and prompt.dropped == 3 - len(prompt.sources)
    for hit in prompt.sources:
        assert hit.text.strip() in prompt.messages[-1]["content"]  # whole, never cut
    assert prompt.tokens + 40 <= 190
    with pytest.raises(ConfigError, match="context"):
        build_prompt("why " * 400, hits, tight, max_new_tokens=40)


def test_openai_compatible_endpoint_streams_an_answer(small_kb):
    with fake_openai(reply="It is held in Kremsville [1].") as (url, seen):
        generator = make_generator("served-model", base_url=url)
        pieces = []
        result = ask(small_kb, "Where is the Zorblat festival held?", generator, on_text=pieces.append)
    assert result.answer == "It is held in Kremsville [1]."
    assert len(pieces) > 3  # streamed word by word
    assert result.check.grounded and result.check.citations[0].source.endswith("festival.txt")
    assert result.check.sentences[0].status == "supported" and "check_s" in result.timings
    assert seen[0]["model"] == "served-model" and seen[0]["stream"] is True


def test_ask_flags_a_citation_of_the_wrong_source(small_kb):
    with fake_openai(reply="It is held in Kremsville every March [2].") as (url, _seen):
        result = ask(small_kb, "Where is the Zorblat festival held?", make_generator("m", base_url=url), k=3)
    assert result.prompt.sources[0].source.endswith("festival.txt")  # so [2] is another document
    [sentence] = result.check.sentences
    assert sentence.status == "cited_unsupported" and not result.check.grounded
    assert result.as_dict()["sentences"][0]["status"] == "cited_unsupported"


@pytest.mark.parametrize("behaviour, message", [("slow", "did not answer in time"), ("garbage", "not a chat completion"),
                                                ("error", "HTTP 500")])
def test_broken_endpoints_get_clear_errors(small_kb, behaviour, message):
    with fake_openai(behaviour) as (url, _seen):
        generator = make_generator("m", base_url=url, timeout=0.5, max_retries=0)
        with pytest.raises(GenerationError, match=message):
            ask(small_kb, "Where is the Zorblat festival held?", generator)


def test_cli_ask_json(small_kb):
    with fake_openai(reply="Kremsville, every March [1].") as (url, _seen):
        result = run_cli("ask", small_kb.path, "When is the Zorblat festival?", "--base-url", url, "--json")
    data = json.loads(result.stdout)
    assert set(data) >= {"answer", "citations", "prompt", "timings"}
    assert data["citations"][0]["source"].endswith("festival.txt") and data["citations"][0]["n"] == 1
    assert set(data["citations"][0]) >= {"n", "doc_id", "source", "chunk_id", "start", "end", "page"}
    assert data["grounded"] and data["sentences"][0]["status"] == "supported"
    missing = run_cli("ask", small_kb.path, "What is the boiling point of liquid nitrogen?", "--json", "--base-url", url)
    assert json.loads(missing.stdout)["found"] is False


def test_chat_rewrites_follow_ups_and_keeps_history(small_kb):
    from ragtune.answer.chat import ChatSession

    with fake_openai(reply="Zorblat festival month") as (url, seen):
        session = ChatSession(small_kb, make_generator("m", base_url=url), min_relevance=0.2)
        first = session.ask("Where is the Zorblat festival held?")
        assert first.query == "Where is the Zorblat festival held?"  # stands alone: not rewritten
        second = session.ask("When does it happen?")
    assert second.query == "Zorblat festival month"  # the model's rewrite, used for retrieval
    assert second.prompt.sources[0].source.endswith("festival.txt")
    final_request = seen[-1]["messages"]
    assert any(m["role"] == "assistant" for m in final_request)  # the earlier turn is in the history
    assert final_request[-1]["content"].endswith("When does it happen?\nAnswer briefly, citing sources as [n].")


def test_chat_falls_back_when_the_rewrite_rambles(small_kb):
    from ragtune.answer.chat import ChatSession

    with fake_openai(reply="word " * 200) as (url, _seen):
        session = ChatSession(small_kb, make_generator("m", base_url=url))
        session.turns.append(("Where is the Halvard bridge?", "Over the river Otter [1]."))
        assert session.standalone_query("When was it finished?") == "Where is the Halvard bridge? When was it finished?"


def test_cli_chat_reads_turns_from_stdin(small_kb):
    with fake_openai(reply="In Kremsville [1].") as (url, _seen):
        result = run_cli("chat", small_kb.path, "--base-url", url, input="Where is the Zorblat festival held?\n\n",
                         env={"COLUMNS": "300"})
    assert "In Kremsville [1]." in result.stdout and "festival.txt" in result.stdout
