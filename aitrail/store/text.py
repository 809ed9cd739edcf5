"""Search terms for the SQLite full-text index.

FTS5's tokenizers split on spaces, which Thai, Chinese and Japanese do not use. We index
such runs as overlapping character bigrams (as Lucene's CJK analyser does), written as ASCII
tokens so that the tokenizer keeps each bigram whole; other words go through as they are and
FTS5's `porter unicode61` tokenizer lowercases and stems them. A query is transformed the
same way, each bigram run becoming a phrase, so "退款" finds "退款政策".
"""

from __future__ import annotations

import re

# Thai, Lao, Khmer, Myanmar, CJK ideographs, kana, Hangul, fullwidth forms.
_SCRIPT_RUN = re.compile(
    r"[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
    r"\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]+"
)
_WORD = re.compile(r"\w+")
# Thai/Lao combining marks and other spacing-insensitive signs stay inside runs.


class _Codes(dict):
    """Code point → seven decimal digits, memoised; used with str.translate (runs in C)."""

    def __missing__(self, key: int) -> str:
        value = self[key] = f"{key:07d}"
        return value


_CODES = _Codes()


def _bigrams(run: str) -> list[str]:
    coded = run.translate(_CODES)
    if len(run) == 1:
        return ["zq" + coded]
    return ["zq" + coded[i : i + 14] for i in range(0, 7 * (len(run) - 1), 7)]


def index_terms(text: str) -> str:
    """The string to put in the FTS column for `text`."""
    out: list[str] = []
    pos = 0
    for match in _SCRIPT_RUN.finditer(text):
        out.append(text[pos : match.start()])
        out.append(" " + " ".join(_bigrams(match.group())) + " ")
        pos = match.end()
    out.append(text[pos:])
    return "".join(out)


def match_expression(query: str) -> str | None:
    """An FTS5 MATCH expression requiring every word (and every script run, as a phrase)."""
    parts: list[str] = []
    pos = 0
    for match in _SCRIPT_RUN.finditer(query):
        parts.extend(_words(query[pos : match.start()]))
        parts.append('"' + " ".join(_bigrams(match.group())) + '"')
        pos = match.end()
    parts.extend(_words(query[pos:]))
    return " AND ".join(parts) or None


def _words(text: str) -> list[str]:
    return ['"' + word + '"' for word in _WORD.findall(text)]
