"""Citations must be supported by the source they point at, not merely exist."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from ragtune.answer.citations import SupportScorer, check_citations, split_sentences
from ragtune.answer.pipeline import Answer, unsupported_items
from ragtune.answer.report import print_answer

DATA = Path(__file__).parent / "data" / "citation_support.jsonl"
BRIDGE = ("The Halvard bridge crosses the river Otter at Lindmoor. Construction began in 1917 and the bridge was "
          "finished in 1921. It is a steel truss bridge 214 metres long, painted green since a 1980 renovation.")
PLUMS = "Visitors to the Zorblat festival in Kremsville eat smoked plums every March."


class Source:
    def __init__(self, n, text):
        self.doc_id, self.source, self.chunk_id, self.text = f"d{n}", f"s{n}.txt", n, text
        self.start, self.end, self.page, self.title = 0, len(text), None, None


SOURCES = [Source(1, BRIDGE), Source(2, PLUMS)]
BOTH = pytest.mark.parametrize("use_embedder", [False, True], ids=["overlap", "embedder"])


def pick(use_embedder, request):
    return request.getfixturevalue("embedder") if use_embedder else None


@BOTH
def test_a_sentence_citing_an_unrelated_source_is_cited_unsupported(use_embedder, request):
    # The previous checker called this grounded: [2] exists, so the sentence counted as cited.
    check = check_citations("The Halvard bridge was finished in 1921 [2].", SOURCES, embedder=pick(use_embedder, request))
    assert not check.grounded
    [sentence] = check.sentences
    assert sentence.status == "cited_unsupported" and sentence.cited == [2] and sentence.source == 2
    assert check.cited_unsupported_sentences == ["The Halvard bridge was finished in 1921 [2]."]
    assert [c.n for c in check.citations] == [2]  # still listed: it is what the model cited


@BOTH
def test_a_correct_citation_supports_a_paraphrase(use_embedder, request):
    answer = "Work on the Halvard bridge was finished in 1921 [1]. Visitors eat smoked plums at the festival [2]."
    check = check_citations(answer, SOURCES, embedder=pick(use_embedder, request))
    assert [s.status for s in check.sentences] == ["supported", "supported"]
    assert check.grounded and all(s.support_score >= 0.5 for s in check.sentences)


@BOTH
def test_uncited_sentences_are_inferred_or_unsupported(use_embedder, request):
    check = check_citations("The bridge is painted green. Quantum chromodynamics explains the colour of quarks.",
                            SOURCES, embedder=pick(use_embedder, request))
    inferred, unsupported = check.sentences
    assert inferred.status == "inferred" and inferred.cited == [] and inferred.source == 1
    assert check.citations[0].n == 1 and check.citations[0].inferred  # the inferred citation is added
    assert unsupported.status == "unsupported"
    assert check.unsupported_sentences == ["Quantum chromodynamics explains the colour of quarks."]
    assert check.uncited_sentences == [inferred.text, unsupported.text]
    assert not check.grounded
    assert check_citations("The bridge is painted green.", SOURCES).grounded  # inferred claims count as supported


def test_a_swapped_number_or_name_is_not_supported():
    check = check_citations("The Halvard bridge was finished in 1912 [1]. The Halvard bridge crosses the river Severn [1].",
                            SOURCES)
    assert [s.status for s in check.sentences] == ["cited_unsupported", "cited_unsupported"]
    assert check.sentences[0].missing == ["1912"] and check.sentences[1].missing == ["Severn"]


def test_unknown_numbers_and_markers_after_the_full_stop():
    assert split_sentences("It was finished in 1921. [1] It is green. [1][2]") == [
        "It was finished in 1921 [1].", "It is green [1][2]."]
    check = check_citations("The bridge was finished in 1921 [7].", SOURCES)
    assert check.unknown == [7] and check.sentences[0].status == "cited_unsupported" and not check.grounded
    assert check_citations("I could not find this in the sources [1].", SOURCES).sentences == []  # not a claim


def test_an_uncalibrated_embedder_falls_back_to_overlap():
    class OtherEmbedder:
        name = "multilingual-e5-small"

        def encode(self, texts, batch_size=64):
            raise AssertionError("thresholds are not calibrated for this embedder's cosines")

    check = check_citations("The Halvard bridge was finished in 1921 [1].", SOURCES, embedder=OtherEmbedder())
    assert check.sentences[0].status == "supported"


def test_as_dict_keeps_the_old_keys_and_adds_sentences():
    data = json.loads(json.dumps(check_citations("The bridge was finished in 1921 [2]. It is painted green.", SOURCES).as_dict()))
    assert set(data) >= {"citations", "unknown_citations", "uncited_sentences", "unsupported_sentences", "grounded",
                         "sentences"}
    assert [s["status"] for s in data["sentences"]] == ["cited_unsupported", "inferred"]
    assert set(data["sentences"][0]) >= {"text", "status", "cited", "support_score"}


def load_pairs():
    return [json.loads(line) for line in DATA.open(encoding="utf-8") if line.strip() and not line.startswith("#")]


def judge(pairs, embedder) -> list[bool]:
    """'Supported?' for each pair with the shipped thresholds (sources and sentences embedded once)."""
    texts = list(dict.fromkeys(p["source"] for p in pairs))
    scorer = SupportScorer(texts, embedder)
    vectors = scorer.embed([p["sentence"] for p in pairs])
    return [scorer.supports(scorer.support(p["sentence"], [texts.index(p["source"])], v)) for p, v in zip(pairs, vectors)]


@pytest.mark.parametrize("use_embedder, min_precision, min_recall", [(False, 0.70, 0.87), (True, 0.68, 0.93)],
                         ids=["overlap", "embedder"])
def test_calibrated_thresholds_on_the_labelled_set(use_embedder, min_precision, min_recall, request):
    # measured when calibrated (bench/citation_check.py): overlap P 0.736 R 0.893; with embedder P 0.706 R 0.960
    pairs = load_pairs()
    assert len(pairs) >= 120 and {p["supported"] for p in pairs} == {True, False}
    said = judge(pairs, pick(use_embedder, request))
    truth = [p["supported"] for p in pairs]
    hits = sum(s and t for s, t in zip(said, truth))
    precision, recall = hits / max(sum(said), 1), hits / sum(truth)
    assert precision >= min_precision and recall >= min_recall, (precision, recall)
    # a true sentence pointed at the wrong source is the case this checker exists for: none gets through
    assert not any(s for s, p in zip(said, pairs) if p["kind"] == "unrelated")


def test_report_keeps_bracketed_text_that_rich_would_eat():
    answer = "The bridge was finished in 1921 [2]. The bridge is painted green. Press [bold] to continue now."
    check = check_citations(answer, SOURCES)
    result = Answer("q", answer, None, check, True, 0.8, {"total_s": 1.0}, unsupported=unsupported_items(check))
    console = Console(file=StringIO(), width=300, record=True)
    print_answer(console, result)
    text = console.export_text()
    assert "unsupported: The bridge was finished in 1921 [2]. (the source it cites does not say this" in text
    assert "carry no [n]" in text  # the old report printed "carry no ;"
    assert "unsupported: Press [bold] to continue now. (no given source says this)" in text
