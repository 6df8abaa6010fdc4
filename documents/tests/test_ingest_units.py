"""Pure parts of the pipeline (no database)."""

from __future__ import annotations

from documents.ingestion.types import ChunkDraft
from documents.services.ingest import _HEADER_MAX_CHARS, embedding_text
from documents.services.progress import ProgressThrottle


def _draft(text: str = "It was founded in 1868.", heading_path: tuple[str, ...] = ()) -> ChunkDraft:
    return ChunkDraft(ordinal=0, text=text, token_count=7, page=None, heading_path=heading_path)


def test_embedding_text_puts_title_and_heading_path_above_the_chunk():
    text = embedding_text("University of Chicago", _draft(heading_path=("History", "Founding")))

    assert text == "University of Chicago > History > Founding\n\nIt was founded in 1868."


def test_embedding_text_without_title_or_headings_is_the_chunk_itself():
    assert embedding_text("", _draft()) == "It was founded in 1868."


def test_embedding_text_cuts_a_long_header_at_a_word():
    header = embedding_text("word " * 100, _draft()).split("\n\n")[0]

    assert len(header) <= _HEADER_MAX_CHARS
    assert header.endswith("word")


def test_progress_throttle_pushes_on_big_steps_and_after_a_pause(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("documents.services.progress.time.monotonic", lambda: now[0])
    throttle = ProgressThrottle(step=2, seconds=0.5)

    decisions = [throttle.due(0), throttle.due(1), throttle.due(1), throttle.due(3)]
    now[0] += 0.6
    decisions.append(throttle.due(4))

    assert decisions == [True, False, False, True, True]
