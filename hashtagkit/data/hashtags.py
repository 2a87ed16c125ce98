"""Hashtag normalisation, as in the paper's section 2.2.

A raw hashtag is kept only if it is made of Latin letters (the paper rejects "non-alphabetic
characters, e.g. Chinese and Korean", so `str.isalpha`, which accepts Hangul, is not enough),
then lower-cased and optionally lemmatised.
"""

from __future__ import annotations

import re

_LETTERS = re.compile(r"[A-Za-z]+")


def strip_hash(tag: str) -> str:
    return tag.strip().lstrip("#")


def is_alphabetic(tag: str) -> bool:
    return bool(_LETTERS.fullmatch(tag))
