"""Sections -> token-bounded chunks, measured with the embedding model's own tokenizer.

`chunk_sections` streams: it holds one group of consecutive sections from the same page and heading at a
time (bounded by `MAX_GROUP_CHARS`), so a 900-page document never sits in memory whole. A chunk never spans
two pages or two headings, and never exceeds `chunk_tokens`: langchain's recursive splitter does the
structure-aware cutting, and a token-level split (by the tokenizer's character offsets, so the document's own
text is kept) catches what it overshoots, such as a long run with no separator.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from langchain_text_splitters import RecursiveCharacterTextSplitter
from langchain_text_splitters.character import _split_text_with_regex

from documents.embedding import Embedder, Tokenizer, as_tokenizer
from documents.ingestion.types import ChunkDraft, Section

# The local model reads at most 256 word pieces; 200 leaves room for a heading or query prefix later.
LOCAL_CHUNK_TOKENS = 200
# OpenAI models read 8k tokens, but retrieval precision and citation size favour small chunks too.
REMOTE_CHUNK_TOKENS = 400
OVERLAP_RATIO = 0.15
# Consecutive sections of one page and heading are chunked as one text up to this size, so that short
# paragraphs merge into full chunks; past it the group is flushed, which bounds memory.
MAX_GROUP_CHARS = 64_000
# A chunk is also capped in characters: a run the tokenizer maps to a single [UNK] (a 10,000-character hex
# string is one "word" to BERT) would otherwise become a huge chunk of one token.
MAX_CHARS_PER_TOKEN = 12
MIN_CHUNK_TOKENS = 16

# Tried in order, most structural first. Zero-width sentence and clause breaks keep punctuation on the left
# piece; CJK text has no spaces, so its full stops and commas are its only break points. There is no
# character-level fallback: an unbreakable run is cut by tokens instead, which is exact and much cheaper.
SEPARATORS = (
    r"\n(?=#{1,6} )",  # markdown headings
    r"\n{2,}",  # blank lines
    r"\n",
    r"(?<=[.!?])[ \t]+|(?<=[\u3002\uff01\uff1f])",  # sentence ends (and the CJK full stop, ! and ?)
    r"(?<=[;:,])[ \t]+|(?<=[\uff1b\uff1a\uff0c\u3001])",  # clauses (and CJK ; : , and the enumeration comma)
    r"[ \t]+",  # words
)


@dataclass(frozen=True)
class Chunker:
    """`chunk_sections` bound to one tokenizer and size, e.g. as `chunker_for(embedder)` returns it."""

    tokenizer: Tokenizer
    chunk_tokens: int
    overlap_tokens: int

    def __call__(self, sections: Iterable[Section]) -> Iterator[ChunkDraft]:
        return chunk_sections(
            sections, tokenizer=self.tokenizer, chunk_tokens=self.chunk_tokens, overlap_tokens=self.overlap_tokens
        )


def chunker_for(embedder: Embedder, *, chunk_tokens: int | None = None, overlap_tokens: int | None = None) -> Chunker:
    """A chunker measuring with `embedder`'s tokenizer, sized for it unless told otherwise."""
    if chunk_tokens is None:
        preferred = LOCAL_CHUNK_TOKENS if embedder.max_input_tokens < 1024 else REMOTE_CHUNK_TOKENS
        chunk_tokens = min(embedder.max_input_tokens, preferred)
    if chunk_tokens > embedder.max_input_tokens:
        raise ValueError(f"chunks of {chunk_tokens} tokens exceed what {embedder.model} reads")
    if overlap_tokens is None:
        overlap_tokens = round(chunk_tokens * OVERLAP_RATIO)
    return Chunker(tokenizer=embedder.tokenizer, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)


def chunk_sections(
    sections: Iterable[Section], *, tokenizer: Any, chunk_tokens: int, overlap_tokens: int
) -> Iterator[ChunkDraft]:
    """Yield chunks of at most `chunk_tokens` tokens, overlapping by about `overlap_tokens`, in document order.

    `tokenizer`: a `documents.embedding.Tokenizer`, a ``tokenizers.Tokenizer``, a transformers fast tokenizer
    or a tiktoken encoding. `ChunkDraft.token_count` is that tokenizer's count for the chunk's text.
    """
    if chunk_tokens < MIN_CHUNK_TOKENS:
        raise ValueError(f"chunk_tokens must be at least {MIN_CHUNK_TOKENS}")
    if not 0 <= overlap_tokens <= chunk_tokens // 2:
        raise ValueError("overlap_tokens must be between 0 and half of chunk_tokens")
    splitter = _Splitter(as_tokenizer(tokenizer), chunk_tokens, overlap_tokens)
    ordinal = 0
    for text, page, heading_path in _groups(sections):
        for piece, count in splitter.split(text):
            yield ChunkDraft(ordinal=ordinal, text=piece, token_count=count, page=page, heading_path=heading_path)
            ordinal += 1


def _groups(sections: Iterable[Section]) -> Iterator[tuple[str, int | None, tuple[str, ...]]]:
    parts: list[str] = []
    size = 0
    key: tuple[int | None, tuple[str, ...]] | None = None
    for section in sections:
        text = section.text.replace("\r\n", "\n") if "\r" in section.text else section.text
        if not text.strip():
            continue
        section_key = (section.page, tuple(section.heading_path))
        if parts and (section_key != key or size + len(text) > MAX_GROUP_CHARS):
            yield "\n\n".join(parts), *key  # type: ignore[misc]
            parts, size = [], 0
        key = section_key
        parts.append(text)
        size += len(text) + 2
    if parts and key is not None:
        yield "\n\n".join(parts), *key


class _Splitter:
    """Cuts one group's text into chunks.

    langchain's splitter makes disjoint "core" chunks of at most `chunk_tokens - overlap_tokens` at the most
    structural breaks that fit; each core is then extended backwards over the end of the previous one, from a
    word start, by at most `overlap_tokens`. (langchain's own overlap only re-uses whole pieces of the level
    it merges, so paragraph- or sentence-sized pieces usually gave no overlap at all.)
    """

    def __init__(self, tokenizer: Tokenizer, chunk_tokens: int, overlap_tokens: int) -> None:
        self._tokenizer = tokenizer
        self._limit = chunk_tokens
        self._overlap = overlap_tokens
        self._core_limit = chunk_tokens - overlap_tokens
        self._max_chars = chunk_tokens * MAX_CHARS_PER_TOKEN
        # The recursive splitter measures every piece at least twice; a per-group memo makes that one call.
        self._lengths: dict[str, int] = {}
        self._splitter = RecursiveCharacterTextSplitter(
            separators=list(SEPARATORS),
            is_separator_regex=True,
            keep_separator="end",
            chunk_size=self._core_limit,
            chunk_overlap=0,
            length_function=self._length,
            strip_whitespace=True,
        )

    def _length(self, text: str) -> int:
        length = self._lengths.get(text)
        if length is None:
            length = self._lengths[text] = self._tokenizer.count(text)
        return length

    def split(self, text: str) -> list[tuple[str, int]]:
        self._lengths.clear()
        starts: list[int] | None = None
        if self._tokenizer.additive:
            starts = [start for start, _ in self._tokenizer.token_spans(text)]
            self._prime(text, starts)
        cores = [core for core in self._splitter.split_text(text) if core]
        self._lengths.clear()
        positions = _positions(text, cores)
        if starts is not None:
            counts = [_count_between(starts, at, at + len(core)) for core, at in zip(cores, positions, strict=True)]
        else:
            counts = self._tokenizer.count_batch(cores)

        planned: list[tuple[int, int] | list[tuple[str, int]]] = []  # (start, end) spans, or hard-split pieces
        previous: int | None = None
        for core, at, count in zip(cores, positions, counts, strict=True):
            end = at + len(core)
            if count > self._limit or len(core) > self._max_chars:
                planned.append(self._hard_split(core))
            else:
                budget = min(self._overlap, self._limit - count)
                start = at
                # A heading opens a new section: the end of the previous one is noise in front of it.
                if previous is not None and budget > 0 and not _HEADING.match(core):
                    start = self._overlap_start(text, previous, at, budget, starts)
                planned.append((start, end))
            previous = at
        spans = [item for item in planned if isinstance(item, tuple)]
        if starts is not None:
            span_counts = [_count_between(starts, start, end) for start, end in spans]
        else:
            span_counts = self._tokenizer.count_batch([text[start:end] for start, end in spans])
        measured = iter(zip(spans, span_counts, strict=True))
        result: list[tuple[str, int]] = []
        for item, core, count in zip(planned, cores, counts, strict=True):
            if isinstance(item, list):
                result.extend(item)
                continue
            (start, end), span_count = next(measured)
            if span_count <= self._limit:
                result.append((text[start:end], span_count))
            else:  # a BPE merge across the join added tokens: drop the overlap rather than overshoot
                result.append((core, count))
        return result

    def _overlap_start(self, text: str, lower: int, upper: int, budget: int, starts: list[int] | None) -> int:
        """Where the overlap taken from text[lower:upper] begins: at most `budget` tokens before `upper`.

        The earliest line or sentence start that fits, else the earliest word start, else no overlap.
        """
        if starts is not None:
            first = bisect_left(starts, upper)
            index = max(bisect_left(starts, lower), first - budget)
            while index < first and not _is_word_start(text, starts[index]):
                index += 1
            earliest = starts[index] if index < first else upper
        else:
            candidates = [match.start() for match in _WORD_START.finditer(text, lower, upper)]
            low, high = 0, len(candidates)  # counts shrink as the start moves right: find the first that fits
            while low < high:
                middle = (low + high) // 2
                if self._tokenizer.count(text[candidates[middle] : upper]) <= budget:
                    high = middle
                else:
                    low = middle + 1
            earliest = candidates[low] if low < len(candidates) else upper
        boundary = _CLAUSE_START.search(text, earliest, upper)
        return boundary.start() if boundary else earliest

    def _prime(self, text: str, starts: list[int]) -> None:
        """Measure every piece the recursive splitter will measure, from one tokenisation of the whole text.

        The splitter asks for lengths one string at a time and would tokenise each level of its recursion
        again. Instead this walks the same recursion with positions, and a piece's length is the number of
        tokens starting inside it (exact for an additive tokenizer); the splitter's lookups then hit the memo.
        """
        self._lengths[text] = len(starts)
        level: list[tuple[int, str, list[str]]] = [(0, text, list(SEPARATORS))]
        while level:
            next_level: list[tuple[int, str, list[str]]] = []
            for offset, piece, separators in level:
                index = next((i for i, separator in enumerate(separators) if re.search(separator, piece)), None)
                if index is None:
                    continue  # the splitter keeps it whole; it was measured one level up
                splits = _split_text_with_regex(piece, separators[index], keep_separator="end")
                if sum(map(len, splits)) != len(piece):
                    continue  # not the contiguous split assumed here: leave these to the length function
                remaining = separators[index + 1 :]
                position = offset
                for split in splits:
                    end = position + len(split)
                    length = bisect_left(starts, end) - bisect_left(starts, position)
                    self._lengths.setdefault(split, length)
                    if remaining and length >= self._core_limit:
                        next_level.append((position, split, remaining))
                    position = end
            level = next_level

    def _hard_split(self, text: str) -> list[tuple[str, int]]:
        """Cut at token boundaries into windows of `chunk_tokens` (and `max_chars`), overlapping."""
        spans = self._tokenizer.token_spans(text)
        if not spans:
            return [(text[i : i + self._max_chars], 0) for i in range(0, len(text), self._max_chars)]
        windows: list[str] = []
        start = 0
        while start < len(spans):
            end = min(len(spans), start + self._limit)
            while end - start > 1 and spans[end - 1][1] - spans[start][0] > self._max_chars:
                end = start + (end - start) // 2
            begin_char, end_char = spans[start][0], spans[end - 1][1]
            if end - start == 1 and end_char - begin_char > self._max_chars:
                # One token over the character cap ([UNK] for a giant "word"): cut it by characters.
                windows.extend(text[i : i + self._max_chars] for i in range(begin_char, end_char, self._max_chars))
            else:
                windows.append(text[begin_char:end_char])
            if end == len(spans):
                break
            start = max(start + 1, end - self._overlap)
        result: list[tuple[str, int]] = []
        for window in windows:
            window = window.strip()
            if window:
                result.extend(self._fit(window))
        return result

    def _fit(self, text: str) -> list[tuple[str, int]]:
        # Re-tokenising a slice can differ from the slice of the tokens (BPE merges at the cut), so verify;
        # halving by characters always ends, as a handful of characters is always under the limit.
        count = self._tokenizer.count(text)
        if count <= self._limit:
            return [(text, count)]
        middle = len(text) // 2
        return [*self._fit(text[:middle]), *self._fit(text[middle:])]


_HEADING = re.compile(r"#{1,6} ")
# Where an overlap may begin: a non-space character after whitespace or after a CJK stop or comma.
# A line or sentence start: a non-space after a newline, after ". " (or ! ?), or after a CJK full stop.
_CLAUSE_START = re.compile(r"(?:(?<=\n)|(?<=[.!?][ \t])|(?<=[\u3002\uff01\uff1f]))\S")
_WORD_START = re.compile(r"(?<=[\s\u3002\uff01\uff1f\uff1b\uff1a\uff0c\u3001])\S")


def _is_word_start(text: str, position: int) -> bool:
    return _WORD_START.match(text, position) is not None


def _positions(text: str, cores: list[str]) -> list[int]:
    """Where each core chunk starts in `text`: they are disjoint, stripped, in order."""
    positions: list[int] = []
    cursor = 0
    for core in cores:
        position = text.find(core, cursor)
        if position < 0:  # cannot happen with the splitter's contiguous joins; never guess a position
            raise ValueError("chunk text not found in its section")
        positions.append(position)
        cursor = position + len(core)
    return positions


def _count_between(starts: list[int], start: int, end: int) -> int:
    return bisect_left(starts, end) - bisect_left(starts, start)
