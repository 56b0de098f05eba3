"""The grounded reading protocol and the one answer pipeline: quotes verified against the source they
name, citations taken from the quote, answers checked for what no source says, retried once, then
'not found' with the closest passage; answers cut by the budget end at a sentence."""

from __future__ import annotations

import pytest

from conftest import kb_of_texts

from ragtune.answer import grounded
from ragtune.answer.pipeline import NOT_FOUND_ANSWER, ask, cut_at_sentence
from ragtune.generate.base import Generation

DOCS = {
    "festival.txt": "The Zorblat festival is held in the town of Kremsville every March. Visitors eat smoked plums.",
    "bridge.txt": "The Halvard bridge crosses the river Otter. It was finished in 1921 and is painted green.",
    "reactor.txt": "The Zorblat-7 fusion reactor was commissioned in Tallinn in 2031. It powers the harbour.",
    "install.md": "# Installing zorbtool\n\nTo install zorbtool on a new machine, run two commands from a fresh\n"
                  "clone:\n\n```bash\nmake demo   # installs and answers\nmake test   # runs the tests\n```\n\n"
                  "Both are safe to run again.",
}


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    base = kb_of_texts(tmp_path_factory.mktemp("grounded"), DOCS)
    yield base
    base.close()


class Scripted:
    """A generator that replies from a script, in order, and records what it was asked."""

    name, context_window = "scripted", 4096

    def __init__(self, *replies, finish="stop"):
        self.replies, self.finish, self.calls = list(replies), finish, []

    def count_tokens(self, text):
        return len(text.split())

    def generate(self, messages, *, max_new_tokens=256, temperature=0.0, on_text=None):
        self.calls.append(messages)
        text = self.replies.pop(0)
        if on_text:
            on_text(text)
        return Generation(text, prompt_tokens=10, completion_tokens=len(text.split()), finish_reason=self.finish)


def source_number(result, name):
    return next(n for n, hit in enumerate(result.prompt.sources, 1) if hit.source.endswith(name))


def test_the_citation_is_the_source_the_quote_comes_from(kb):
    model = Scripted("Quote: It was finished in 1921 and is painted green.\nAnswer: It was finished in 1921.")
    result = ask(kb, "When was the Halvard bridge finished?", model, prompt="grounded", k=3)
    n = source_number(result, "bridge.txt")
    assert result.answer == f"It was finished in 1921 [{n}]." and result.bare == "It was finished in 1921."
    assert [c.n for c in result.check.citations] == [n] and result.check.grounded
    [quote] = result.quotes
    document = DOCS["bridge.txt"]
    assert quote["n"] == n and document[quote["start"]:quote["end"]] == "It was finished in 1921 and is painted green."
    assert result.unsupported == [] and result.rejected == [] and result.found


def test_a_quote_that_is_not_in_its_source_is_rejected_then_not_found(kb):
    invented = "Quote: The Halvard bridge was built of gold in 1921.\nAnswer: 1921"
    model = Scripted(invented, "It was built of gold.")
    result = ask(kb, "When was the Halvard bridge finished?", model, prompt="grounded", k=3)
    assert not result.found and result.answer == NOT_FOUND_ANSWER
    assert result.rejected[0]["reason"].startswith("a quote is in no source")
    assert result.rejected[1]["reason"] == "the quotes do not say what the answer says"
    assert len(model.calls) == 2  # retried once, as a direct answer whose support ragtune looks for
    assert model.calls[1][0]["content"] == grounded.SYSTEMS["locate"]
    assert result.best_passage["source"].endswith("bridge.txt") and "1921" in result.best_passage["text"]


def test_an_invented_entity_is_rejected_and_the_retry_answers_from_the_quote(kb):
    quote = "Quote: The Zorblat-7 fusion reactor was commissioned in Tallinn in 2031."
    model = Scripted(f"{quote}\nAnswer: It was commissioned in Tallinn, Turkey.", "In Tallinn.")
    result = ask(kb, "Where was the Zorblat-7 fusion reactor commissioned?", model, prompt="grounded", k=3)
    assert result.rejected[0]["reason"] == "the quoted sources do not contain Turkey"
    assert result.bare == "In Tallinn." and "Turkey" not in result.answer and result.found
    n = source_number(result, "reactor.txt")
    assert result.answer == f"In Tallinn [{n}]." and result.quotes[0]["text"].startswith("The Zorblat-7 fusion reactor")


def test_plain_prompt_lists_an_invented_entity_as_unsupported_and_strict_drops_it(kb):
    reply = "The reactor was commissioned in Tallinn, Turkey [1]. It powers the harbour [1]."
    result = ask(kb, "Where was the Zorblat-7 fusion reactor commissioned?", Scripted(reply), prompt="rag", k=1)
    assert [u["text"] for u in result.unsupported] == ["The reactor was commissioned in Tallinn, Turkey [1]."]
    assert "Turkey" in result.unsupported[0]["reason"]
    assert result.as_dict()["unsupported"] == result.unsupported
    strict = ask(kb, "Where was the Zorblat-7 fusion reactor commissioned?", Scripted(reply), prompt="rag", k=1,
                 strict=True)
    assert strict.answer == "It powers the harbour [1]." and strict.dropped == [result.unsupported[0]["text"]]
    clean = ask(kb, "Where was the Zorblat-7 fusion reactor commissioned?",
                Scripted("It was commissioned in Tallinn in 2031 [1]."), prompt="rag", k=1)
    assert clean.unsupported == []


@pytest.mark.parametrize("reply", ["Quote: It was finished in 1921 and is painted green.\nAnswer: [1]",
                                   "Quote: It was finished in 1921 and is painted green.\n"
                                   "Answer: When was the Halvard bridge finished?"])
def test_a_bare_marker_or_the_question_repeated_is_no_answer(kb, reply):
    result = ask(kb, "When was the Halvard bridge finished?", Scripted(reply, "[1]"), prompt="grounded", k=3)
    assert not result.found and len(result.rejected) == 2


def test_the_model_may_say_no_source_answers(kb):
    result = ask(kb, "Who painted the Halvard bridge?", Scripted("Quote: none\nAnswer: not found in the sources"),
                 prompt="grounded", k=3)
    assert not result.found and result.answer == NOT_FOUND_ANSWER and result.rejected == []


def test_an_answer_cut_by_the_budget_ends_at_its_last_sentence(kb):
    reply = "The festival is held in Kremsville [1]. Visitors eat smoked plums and the town of"
    result = ask(kb, "Where is the Zorblat festival held?", Scripted(reply, finish="length"), prompt="rag", k=1)
    assert result.answer == "The festival is held in Kremsville [1]."
    assert cut_at_sentence("Short. And then some more words") == "Short."
    assert cut_at_sentence("It ends here [2]. Then") == "It ends here [2]."
    assert cut_at_sentence("no sentence end at all") == "no sentence end at all …"


def test_grounded_answers_stream_quotes_as_reasoning_and_only_the_checked_answer_as_content(kb):
    quote = "Quote: The Zorblat-7 fusion reactor was commissioned in Tallinn in 2031."
    model = Scripted(f"{quote}\nAnswer: Tallinn, Turkey.", "Tallinn.")
    events = []
    result = ask(kb, "Where was the Zorblat-7 fusion reactor commissioned?", model, prompt="grounded", k=3,
                 on_event=lambda piece, kind: events.append((kind, piece)))
    content = "".join(p for kind, p in events if kind == "content")
    assert content == result.answer and "Turkey" not in content
    assert "".join(p for kind, p in events if kind == "reasoning").startswith(quote)


def test_grammar_admits_only_source_sentences_and_no_citation_marker():
    grammar = grounded.quote_grammar(["It was finished in 1921.", 'A "quoted" \\ line.'])
    assert 'sentence ::= "It was finished in 1921." | "A \\"quoted\\" \\\\ line."' in grammar
    assert "answer ::= " in grammar and "[^\\n\\[\\]]{0,399}" in grammar
    first = grounded.quote_grammar(["It was finished in 1921."], mode="answer-first")
    assert first.startswith('root ::= "Answer: " answer "\\n" quote')


def test_an_answer_that_introduces_a_list_gets_the_whole_list(kb):
    intro = "To install zorbtool on a new machine, run two commands from a fresh clone:"
    model = Scripted(f"Answer: {intro}\nQuote: {intro}")
    result = ask(kb, "How do I install zorbtool?", model, prompt="grounded", k=2)
    assert result.found and "make demo # installs and answers; make test # runs the tests" in result.answer
    assert result.quotes[0]["source"].endswith("install.md")


@pytest.fixture(scope="module")
def smollm2():
    from ragtune.generate import make_generator
    from ragtune.generate.llamacpp import unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    return make_generator("SmolLM2-135M-Instruct", threads=2, backend="llamacpp").load()


def test_on_llamacpp_the_grammar_makes_a_bare_marker_impossible(smollm2):
    """Primed to reply "Answer: [1]", the model writes it without the grammar and cannot with it: the
    answer line takes no bracket, and the quote can only be a sentence of the sources."""
    sentences = ["The Halvard bridge was finished in 1921.", "It is painted green."]
    messages = [{"role": "system", "content": "Copy the user's text exactly."},
                {"role": "user", "content": "Answer: [1]"}, {"role": "assistant", "content": "Answer: [1]"},
                {"role": "user", "content": "Answer: [1]"}]
    free = smollm2.generate(messages, max_new_tokens=8)
    assert "[1]" in free.text  # what the model wants to write
    bound = smollm2.generate(messages, max_new_tokens=120,
                             grammar=grounded.quote_grammar(sentences, mode="answer-first"))
    reply = grounded.parse(bound.text)
    assert "[" not in bound.text and "]" not in bound.text, bound.text
    assert reply.not_found or reply.answer, bound.text
    if bound.finish_reason == "stop":  # complete: every quote is a whole sentence of the sources
        assert all(q in sentences for q in reply.quotes), bound.text


def test_an_identifier_made_of_question_words_is_still_an_answer():
    question = "Which environment variable does Lua 5.2 check first for the module search path?"
    assert grounded.empty_reason("LUA_PATH_5_2", question) is None
    assert grounded.empty_reason("the module search path", question) == "the answer adds no word to the question"


def test_a_retry_written_in_the_answer_first_shape_is_read_as_its_answer(kb):
    """A reader adapter (trained on "Answer: ... / Quote: ...") keeps that shape when retried in
    the locate prompt; its "Answer:" label is the shape, not a name the sources must contain."""
    quote = "Quote: The Zorblat-7 fusion reactor was commissioned in Tallinn in 2031."
    model = Scripted(f"Answer: It was commissioned in Tallinn, Turkey.\n{quote}", f"Answer: In Tallinn.\n{quote}")
    result = ask(kb, "Where was the Zorblat-7 fusion reactor commissioned?", model, prompt="reader", k=3)
    assert result.rejected[0]["reason"] == "the quoted sources do not contain Turkey" and len(result.rejected) == 1
    n = source_number(result, "reactor.txt")
    assert result.answer == f"In Tallinn [{n}]." and result.protocol == "reader" and result.found
    assert model.calls[0][0]["content"] == grounded.SYSTEMS["answer-first"] and len(model.calls[0]) == 2  # no example
