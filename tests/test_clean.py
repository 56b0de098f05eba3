from ragtune.ingest.clean import (
    clean_pdf_text,
    clean_text,
    join_hyphenation,
    normalize_whitespace,
    remove_control_characters,
)


def test_whitespace_is_collapsed_but_paragraphs_kept():
    assert normalize_whitespace("a  \t b \nc\n\n\n\nd") == "a b\nc\n\nd"


def test_control_characters_removed_but_newlines_kept():
    assert remove_control_characters("a\x00b\x07c\nd\u200be\ufeff") == "abc\nde"


def test_pdf_hyphenation_is_joined_only_between_lowercase_words():
    assert join_hyphenation("exam-\nple and Anglo-\nSaxon") == "example and Anglo-\nSaxon"


def test_clean_text_normalises_unicode_and_newlines():
    assert clean_text("Cafe\u0301\r\nnext  ") == "Caf\u00e9\nnext"


def test_pdf_cleaning_undoes_ligatures():
    assert clean_pdf_text("e\ufb03cient de-\nvice") == "efficient device"
