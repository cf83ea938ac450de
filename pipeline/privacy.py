"""PII scrubbing for text that leaves the conversation tables (dataset, exports, logs).

Rules, not a model: predictable, fast, and easy to audit. Each kind of identifier is replaced
by a bracketed placeholder so the example still reads naturally for training.
"""

from __future__ import annotations

import re

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[email]"),
    (re.compile(r"https?://\S+"), "[link]"),
    # Dates of birth and other full dates: 03/04/1990, 1990-04-03, 3 April 1990.
    (re.compile(r"\b\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b|\b\d{4}-\d{2}-\d{2}\b"), "[date]"),
    (re.compile(r"\b\d{1,2}(?:st|nd|rd|th)? (?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]* \d{4}\b", re.I), "[date]"),
    # Phone numbers: 7+ digits with optional separators and country code.
    (re.compile(r"(?<!\w)\+?\d[\d ().-]{6,}\d(?!\w)"), "[phone]"),
    # Street addresses: a number followed by words and a street type.
    (re.compile(r"\b\d{1,5}\s+(?:[A-Z][a-z]+\s){1,3}(?:Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Dr|Boulevard|Blvd|Way|Court|Ct|Place|Pl)\b\.?"), "[address]"),
    # Self-introductions: "my name is Anna", "I'm Anna Smith", "call me Jo".
    (re.compile(r"\b(my name is|my name's|i am called|call me|this is)\s+[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?", re.I), r"\1 [name]"),
    (re.compile(r"\b(i'm|i am)\s+(?=[A-Z][a-z]+\b(?:\s+[A-Z][a-z]+)?(?:[,.!]|$))[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?"), r"\1 [name]"),
]


def scrub(text: str) -> str:
    """``text`` with emails, links, dates, phone numbers, addresses and self-given names replaced."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
