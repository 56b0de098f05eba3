"""Dense, lexical and hybrid search on a real KB: fields, explain, filters, consistency, bad queries."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from ragtune.errors import QueryError

TOPICS = {
    "astronomy": "Telescopes observe distant galaxies, nebulae and the cosmic microwave background radiation.",
    "cooking": "Knead the bread dough, let it rise overnight, then bake it in a hot oven until golden.",
    "sailing": "Trim the mainsail, watch the wind shifts and tack the boat upwind towards the harbour.",
    "gardening": "Plant tomato seedlings in rich compost, water them daily and stake the growing vines.",
    "finance": "Diversify the investment portfolio across bonds, equities and an emergency cash reserve.",
}


def write_records(path, extra=()):
    """40 records: 5 topics x 8 years, with lang, year, tags and a unique code word each."""
    rows = []
    for t, (topic, text) in enumerate(TOPICS.items()):
        for y in range(8):
            rows.append({"_id": f"{topic}-{y}", "title": f"{topic.title()} note {y}",
                         "text": f"{text} Reference code zq{t}{y}x.", "lang": "en" if y % 2 == 0 else "de",
                         "year": 2017 + y, "date": f"{2017 + y}-06-{10 + t:02d}",
                         "tags": [topic, "even" if y % 2 == 0 else "odd"]})
    rows.extend(extra)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def ingest_records(kb, path):
    from ragtune.config import IngestOptions, RecordFields

    fields = RecordFields(text_field="text", id_field="_id", title_field="title")
    return kb.ingest([path], IngestOptions(fields=fields))


@pytest.fixture
def records_kb(make_kb, tmp_path):
    kb = make_kb()
    path = tmp_path / "notes.jsonl"
    write_records(path)
    ingest_records(kb, path)
    return kb, path


def test_modes_return_complete_hits_with_explain(records_kb):
    kb, _ = records_kb
    for mode in ("hybrid", "dense", "lexical"):
        hits = kb.search("baking bread in the oven", 5, mode=mode)
        assert len(hits) == 5
        assert hits[0].doc_id.startswith("cooking"), (mode, [h.doc_id for h in hits])
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        for hit in hits:
            assert hit.text and hit.source and hit.chunk_id > 0 and hit.end > hit.start
    hybrid = kb.search("baking bread in the oven", 5)
    assert set(hybrid[0].ranks) == {"dense", "lexical", "fused"}
    first = hybrid[0].ranks
    assert first["fused"]["score"] == pytest.approx(1 / (60 + first["dense"]["rank"]) + 1 / (60 + first["lexical"]["rank"]))


def test_lexical_finds_exact_code_words_dense_cannot(records_kb):
    kb, _ = records_kb
    hits = kb.search("zq23x", 3, mode="lexical")
    assert hits[0].doc_id == "sailing-3"
    assert kb.search("zq23x", 1, mode="hybrid")[0].doc_id == "sailing-3"


def test_filters_equality_membership_ranges_prefix(records_kb):
    kb, path = records_kb
    german = kb.search("weather and wind", 40, filters={"lang": "de"})
    assert len(german) == 20 and all(h.metadata["lang"] == "de" for h in german)
    assert {h.metadata["year"] for h in kb.search("notes", 40, filters=["year>=2020", "year<2022"])} == {2020, 2021}
    tagged = kb.search("notes", 40, filters={"tags": ["sailing", "finance"]})
    assert len(tagged) == 16 and {h.doc_id.split("-")[0] for h in tagged} == {"sailing", "finance"}
    assert len(kb.search("notes", 40, filters="lang!=de")) == 20
    dated = kb.search("notes", 40, filters={"date": {"gte": "2019-06-12", "lt": "2020-01-01"}})
    assert sorted(h.metadata["date"] for h in dated) == ["2019-06-12", "2019-06-13", "2019-06-14"]
    assert len(kb.search("notes", 40, filters={"source": {"prefix": str(path.parent)}})) == 40
    assert kb.search("notes", 5, filters="source^=/nowhere/") == []
    assert {h.doc_id for h in kb.search("notes", 5, filters="doc_id in cooking-1,cooking-2")} == {"cooking-1", "cooking-2"}
    with pytest.raises(QueryError, match="--filter"):
        kb.search("notes", 5, filters="lang~en")


def test_filters_never_under_retrieve_on_hnsw(make_kb, tmp_path):
    """Force HNSW (threshold 10 chunks): a filter matching 8 of 40 still returns k=8 hits."""
    kb = make_kb(index={"hnsw_min_chunks": 10, "hnsw_m": 8})
    write_records(tmp_path / "notes.jsonl")
    ingest_records(kb, tmp_path / "notes.jsonl")
    assert kb.refresh_indexes()["dense"]["kind"] == "hnsw"
    for mode in ("dense", "lexical", "hybrid"):
        # every record has "note" in its title, so lexical matches all 40 too
        hits = kb.search("telescope galaxies note", 8, mode=mode, filters={"tags": "cooking"})
        assert len(hits) == 8 and all(h.doc_id.startswith("cooking") for h in hits), mode


def test_indexes_follow_ingest_sync_and_delete(make_kb, tmp_path):
    kb = make_kb(index={"hnsw_min_chunks": 10, "hnsw_m": 8})
    folder = tmp_path / "docs"
    folder.mkdir()
    write_records(folder / "notes.jsonl")
    ingest_records(kb, folder)
    extra = {"_id": "volcano", "title": "Volcano", "text": "Magma chambers feed the xylophonic volcano eruption."}
    write_records(folder / "notes.jsonl", extra=[extra])
    ingest_records(kb, folder)
    assert kb.search("xylophonic", 1, mode="lexical")[0].doc_id == "volcano"
    assert kb.search("magma volcano eruption", 1, mode="dense")[0].doc_id == "volcano"
    removed = kb.delete(str(folder / "notes.jsonl"))
    assert removed == 41
    assert kb.search("xylophonic", 3, mode="lexical") == []
    assert kb.search("magma volcano eruption", 3, mode="dense") == []
    sizes = kb.refresh_indexes()
    assert sizes["dense"]["size"] == 0 and sizes["lexical"]["size"] == 0


def test_missing_or_corrupt_index_files_are_rebuilt_without_data_loss(records_kb):
    from ragtune.kb import KnowledgeBase

    kb, _ = records_kb
    expected = [h.chunk_id for h in kb.search("wind and sails", 5)]
    index_dir = kb.path / "index"
    chunks = kb.stats()["chunks"]
    kb.close()
    for damage in ("delete", "corrupt"):
        if damage == "delete":
            for path in index_dir.rglob("*"):
                if path.is_file():
                    path.unlink()
        else:
            (index_dir / "dense.faiss").write_bytes(b"\x00garbage" * 100)
            for path in (index_dir / "lexical").iterdir():
                if path.is_file() and path.stat().st_size > 0:
                    path.write_bytes(b"corrupt" + path.read_bytes()[7:][::-1])
        with KnowledgeBase.open(kb.path) as reopened:
            assert [h.chunk_id for h in reopened.search("wind and sails", 5)] == expected, damage
            assert reopened.retriever.dense().rebuilt and reopened.retriever.lexical().rebuilt
            assert reopened.stats()["chunks"] == chunks
        with KnowledgeBase.open(kb.path) as again:  # the rebuilt files were saved and now load as-is
            again.search("wind and sails", 5)
            assert not again.retriever.dense().rebuilt and not again.retriever.lexical().rebuilt


def test_changes_committed_without_an_index_update_are_caught_up(records_kb, tmp_path):
    """A writer killed after its SQLite commit but before saving indexes: the log replays it."""
    from ragtune.config import IngestOptions, RecordFields
    from ragtune.ingest.pipeline import Ingestor
    from ragtune.kb import KnowledgeBase

    kb, _ = records_kb
    late = tmp_path / "late.jsonl"
    late.write_text(json.dumps({"_id": "late", "title": "Late", "text": "A quokkamarine surfaced."}) + "\n")
    options = IngestOptions(fields=RecordFields(text_field="text", id_field="_id", title_field="title"))
    Ingestor(kb.store, kb.embedder, kb.config, options, None).run([late])  # bypasses the index update
    kb.close()
    with KnowledgeBase.open(kb.path) as reopened:
        assert reopened.search("quokkamarine", 1, mode="lexical")[0].doc_id == "late"
        assert reopened.search("quokkamarine", 1, mode="dense")[0].doc_id == "late"
        assert not reopened.retriever.dense().rebuilt  # caught up incrementally, not rebuilt


@pytest.mark.parametrize("query, message", [("", "empty"), ("   ", "empty"), ("x" * 10_001, "limit"),
                                            (b"bytes", "bytes"), (42, "text"), ("a\x00b", "NUL")])
def test_bad_queries_get_clear_errors(records_kb, query, message):
    kb, _ = records_kb
    with pytest.raises(QueryError, match=message):
        kb.search(query, 3)


def test_bad_options_name_the_flag(records_kb):
    kb, _ = records_kb
    with pytest.raises(QueryError, match="--mode"):
        kb.search("x", 3, mode="fuzzy")
    with pytest.raises(QueryError, match="--k"):
        kb.search("x", 0)


def test_cli_search_json_explain_and_errors(records_kb):
    kb, _ = records_kb
    kb.close()
    result = run_cli("search", kb.path, "sailing upwind", "--k", 3, "--mode", "hybrid", "--json", "--explain",
                     "--filter", "lang=en")
    hits = json.loads(result.stdout)
    assert len(hits) == 3 and hits[0]["doc_id"].startswith("sailing")
    assert {"doc_id", "source", "chunk_id", "text", "score", "start", "end", "page", "ranks"} <= set(hits[0])
    assert "fused" in hits[0]["ranks"]
    plain = json.loads(run_cli("search", kb.path, "sailing upwind", "--mode", "lexical", "--json").stdout)
    assert "ranks" not in plain[0]
    table = run_cli("search", kb.path, "sailing upwind", "--explain", env={"COLUMNS": "200"}).stdout
    assert "dense" in table and "lexical" in table
    bad = run_cli("search", kb.path, "  ", check=False)
    assert bad.returncode != 0 and "query is empty" in bad.stderr
    bad = run_cli("search", kb.path, "x", "--filter", "year>>1", check=False)
    assert bad.returncode != 0 and "--filter" in bad.stderr


def test_a_version_1_knowledge_base_migrates_and_gets_indexes(records_kb):
    """KBs made before the change log existed: migration 2 adds it, indexes build from the store."""
    import shutil
    import sqlite3

    from ragtune.kb import KnowledgeBase

    kb, _ = records_kb
    expected = [h.chunk_id for h in kb.search("telescopes and galaxies", 3, mode="dense")]
    kb.close()
    shutil.rmtree(kb.path / "index")
    conn = sqlite3.connect(kb.path / "ragtune.db")
    conn.executescript("DROP TRIGGER chunk_log_insert; DROP TRIGGER chunk_log_delete; DROP TABLE chunk_log;"
                       "DELETE FROM sqlite_sequence WHERE name = 'chunk_log'; PRAGMA user_version = 1;")
    conn.close()
    with KnowledgeBase.open(kb.path) as reopened:
        assert reopened.store.conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert [h.chunk_id for h in reopened.search("telescopes and galaxies", 3, mode="dense")] == expected
        assert reopened.search("zq23x", 1, mode="lexical")[0].doc_id == "sailing-3"
