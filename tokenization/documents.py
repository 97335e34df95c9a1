"""From raw texts to capped token ids: the one tokenization of documents.

Shared by preprocessing (``beam_pipelines.transforms.TokenizeFn``) and prediction on raw
documents (``modeling.classifier``), so that a document predicted from its text gets exactly the
token ids its preprocessed record would hold: a text longer than ``max_doc_chars`` characters is
cut to its head and tail before the tokenizer sees it (``cap_chars``), one tokenizer call gets at
most ``MAX_CHARS_PER_TOKENIZER_CALL`` characters, and the ids are capped at ``max_doc_tokens``
(``cap_tokens``) right after each call.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from tokenization.tokenizer import tokenize_batch

__all__ = [
    "MAX_CHARS_PER_TOKENIZER_CALL",
    "cap_chars",
    "cap_tokens",
    "char_bounded_groups",
    "tokenize_texts",
]

# Characters of text given to one tokenizer call at most. A batch of long texts is tokenized in
# several calls below this, so that a batch of 64 texts of --max_doc_chars each does not need
# 64 times the memory of one (measured: ~0.7 GB per million tokens while the fast tokenizer
# works, so ~0.3-0.4 GB for 2M characters of English). Ordinary batches (64 x a few thousand
# characters) stay one call.
MAX_CHARS_PER_TOKENIZER_CALL = 2_000_000
# How far from a cut point ``cap_chars`` looks for whitespace, so that it does not split a word.
_CUT_WHITESPACE_WINDOW = 100


def cap_chars(text: str, max_doc_chars: int) -> str:
    """Bound a pathological text before tokenizing: keep its first and last halves of ``max_doc_chars``.

    The same head-and-tail rule as ``cap_tokens``, in characters, so that the tokenizer never
    sees more than ``max_doc_chars`` characters of one text. The cuts move back (head) or
    forward (tail) to whitespace within ``_CUT_WHITESPACE_WINDOW`` characters, so no word is
    split when the text has spaces, and head and tail are joined by one space (counted in the
    budget), so the last word of the head does not merge with the first word of the tail.

    Args:
        text: one TEXT_A or TEXT_B.
        max_doc_chars: the most characters to keep; 0 keeps every text whole.

    Returns:
        ``text`` itself when it is short enough, else a string of at most ``max_doc_chars``
        characters: ``head + " " + tail``.
    """
    if max_doc_chars <= 0 or len(text) <= max_doc_chars:
        return text
    head_end = max_doc_chars // 2
    tail_start = len(text) - (max_doc_chars - head_end - 1)  # one character for the joining space
    for position in range(head_end, max(head_end - _CUT_WHITESPACE_WINDOW, 0) - 1, -1):
        if text[position].isspace():  # text[:position] ends a word
            head_end = position
            break
    for position in range(tail_start - 1, min(tail_start - 1 + _CUT_WHITESPACE_WINDOW, len(text) - 1) + 1):
        if text[position].isspace():  # text[position + 1:] starts a word
            tail_start = position + 1
            break
    return text[:head_end] + " " + text[tail_start:]


def cap_tokens(ids: Sequence[int], max_doc_tokens: int) -> Sequence[int]:
    """Bound a pathological document: keep its first half and last half of ``max_doc_tokens``.

    Keeping both ends means ``head``, ``tail`` and ``ht`` still see the true head and tail for
    any budget up to ``max_doc_tokens / 2``.
    """
    if len(ids) <= max_doc_tokens:
        return ids
    keep_head = max_doc_tokens // 2
    keep_tail = max_doc_tokens - keep_head
    return list(ids[:keep_head]) + list(ids[len(ids) - keep_tail :])


def char_bounded_groups(texts_a: Sequence[str], texts_b: Sequence[str], max_chars: int) -> Iterator[tuple[int, int]]:
    """Consecutive ``(start, end)`` ranges of texts whose TEXT_A (and TEXT_B) characters add up
    to at most ``max_chars`` each; a range holds at least one row whatever its length."""
    start = 0
    chars_a = chars_b = 0
    for index, (a, b) in enumerate(zip(texts_a, texts_b)):
        if index > start and (chars_a + len(a) > max_chars or chars_b + len(b) > max_chars):
            yield start, index
            start, chars_a, chars_b = index, 0, 0
        chars_a += len(a)
        chars_b += len(b)
    if start < len(texts_a):
        yield start, len(texts_a)



def tokenize_texts(
    tokenizer: Any,
    texts_a: Sequence[str],
    texts_b: Sequence[str],
    *,
    max_doc_chars: int,
    batch_size: int = 64,
) -> Iterator[tuple[int, list[int], list[int], bool]]:
    """``(index, TEXT_A ids, TEXT_B ids, cut at max_doc_chars)`` of each text pair, in order.

    The ids are uncapped (the caller caps each document with ``cap_tokens`` before asking for
    the next, so that only one tokenizer call's uncapped ids are alive at a time). One
    tokenizer call per ``batch_size`` texts, fewer when they exceed
    ``MAX_CHARS_PER_TOKENIZER_CALL`` characters; TEXT_B is tokenized only where it is not empty.
    """
    for start in range(0, len(texts_a), batch_size):
        chunk_a = [cap_chars(text, max_doc_chars) for text in texts_a[start : start + batch_size]]
        chunk_b = [cap_chars(text, max_doc_chars) for text in texts_b[start : start + batch_size]]
        for group_start, group_end in char_bounded_groups(chunk_a, chunk_b, MAX_CHARS_PER_TOKENIZER_CALL):
            ids_a = tokenize_batch(tokenizer, chunk_a[group_start:group_end])
            with_b = [i for i in range(group_start, group_end) if chunk_b[i]]
            ids_b = dict(zip(with_b, tokenize_batch(tokenizer, [chunk_b[i] for i in with_b])))
            for index, a in enumerate(ids_a, start=group_start):
                cut = chunk_a[index] is not texts_a[start + index] or chunk_b[index] is not texts_b[start + index]
                yield start + index, a, ids_b.get(index, []), cut
            del ids_a, ids_b  # the uncapped ids of this group: free them before the next call
