"""PII scrubbing for text that leaves the conversation tables (dataset, exports, logs).

Rules, not a model: predictable, fast, and easy to audit. Each kind of identifier is replaced
by a bracketed placeholder so the example still reads naturally for training:

* ``[email]``, ``[link]``, ``[handle]`` (``@name`` on social media);
* ``[date]``: full dates (``03/04/1990``, ``1990-04-03``, ``3 April 1990``, ``April 3rd, 1990``)
  and whatever follows "date of birth" / "DOB" / "born on";
* ``[phone]``: seven or more digits with the usual separators, with or without a country
  code or brackets; ``[id]``: US social security numbers;
* ``[address]``: a house number with a street name and type (``12 Baker Street``,
  ``4 elm road``), flat or apartment numbers, UK postcodes, US state + ZIP;
* ``[name]``: names the text itself marks as names: self-introductions ("my name is …",
  "I'm Anna", "call me Jo"), greetings and sign-offs ("Hi Sam,", "Thanks, Anna"), titles
  ("Dr Patel", "Mrs. Jones"), and relatives or friends named in passing ("my son Jake").

Medical text is left alone: ages ("I'm 34"), percentages, temperatures, durations, HDSS
scores and doses do not look like any of the above. A name that nothing marks as a name
(a bare "Anna said …") is not found; reviewers see the scrubbed text and can edit further.
"""

from __future__ import annotations

import re
from typing import Any

_MONTH = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_NUMERIC_DATE = (  # the same separator twice: 03/04/1990, 3.4.90, 1990-04-03
    r"\d{1,2}/\d{1,2}/\d{2,4}|\d{1,2}\.\d{1,2}\.\d{2,4}|\d{1,2}-\d{1,2}-\d{2,4}|\d{4}-\d{1,2}-\d{1,2}|\d{4}/\d{1,2}/\d{1,2}"
)
_WORD_DATE = (
    rf"{_DAY}(?:\s+of)?\s+{_MONTH}\.?,?\s+\d{{4}}"  # 3 April 1990, 3rd of April, 1990
    rf"|{_MONTH}\.?\s+{_DAY},?\s+\d{{4}}"  # April 3, 1990
)
# Words that follow a greeting or "call me" without being a name.
_NOT_NAMES = (
    "there|everyone|everybody|all|guys|folks|team|doctor|doc|again|back|now|when|if|after|before|"
    "please|thanks|thank|sorry|so|just|the|a|an|it|this|that|here|today|tomorrow|maybe|anytime|"
    "crazy|silly|weird|paranoid|old|dramatic|honestly|soon|later|morning|evening|"
    "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
)
_NAME = r"[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"
_FULL_NAME = rf"{_NAME}(?:\s+{_NAME})?"
_STREET_TYPES = (
    r"(?:[Ss]treet|St|[Rr]oad|Rd|[Aa]venue|Ave|[Ll]ane|Ln|[Dd]rive|Dr|[Bb]oulevard|Blvd|Way|[Cc]ourt|Ct"
    r"|Place|Pl|[Cc]lose|[Cc]rescent|[Tt]errace|[Gg]ardens|Square|Sq)"
)
_RELATIVES = (
    r"son|daughter|husband|wife|partner|boyfriend|girlfriend|brother|sister|mum|mom|mother|dad|father|"
    r"friend|colleague|boss|teacher|coach|grandson|granddaughter|child|kid|niece|nephew|cousin"
)



_YEAR_RANGE = re.compile(r"(?:19|20)\d\d\s*[-/]\s*(?:19|20)?\d\d")


def _phone(match: re.Match[str]) -> str:
    """A phone number has at least seven digits ("2019 - 2021" is not one)."""
    text = match.group(0)
    if sum(c.isdigit() for c in text) < 7 or _YEAR_RANGE.fullmatch(text.strip()):
        return text
    return "[phone]"


_PATTERNS: list[tuple[re.Pattern[str], Any]] = [
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[email]"),
    (re.compile(r"https?://\S+|\bwww\.\S+", re.I), "[link]"),
    (re.compile(r"(?<![\w@])@[A-Za-z0-9_]{2,30}\b"), "[handle]"),
    # Dates of birth: the label and what follows it, then any full date.
    (re.compile(rf"\b(date of birth|d\.?o\.?b\.?|born on|birthday is)(\s*[:\-]?\s*)"
                rf"(?:{_NUMERIC_DATE}|{_WORD_DATE}|{_DAY}(?:\s+of)?\s+{_MONTH}|{_MONTH}\.?\s+{_DAY}|{_MONTH}\s+\d{{4}})",
                re.I), r"\1\2[date]"),
    (re.compile(rf"\b(?:{_NUMERIC_DATE})\b"), "[date]"),
    (re.compile(rf"\b(?:{_WORD_DATE})\b", re.I), "[date]"),
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "[id]"),
    # Phone numbers: 7+ digits with optional separators, brackets and country code.
    (re.compile(r"(?<![\w+])(?:\+|00)?\(?\d[\d ().-]{5,}\d(?!\w)"), _phone),
    # Addresses: a house number, one to three capitalised words and a street type; flats; postcodes.
    (re.compile(rf"\b\d{{1,5}}[A-Za-z]?,?\s+(?:[A-Z][a-z]+\s){{1,3}}{_STREET_TYPES}\b\.?"), "[address]"),
    (re.compile(r"\b\d{1,5}\s+[a-z]+(?:\s[a-z]+)?\s(?:street|road|avenue|lane|drive|boulevard|crescent|terrace)\b"),
     "[address]"),
    (re.compile(r"\b(?:apt|apartment|flat|unit|suite)\.?\s*#?\s*\d+[A-Za-z]?\b", re.I), "[address]"),
    (re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}\b"), "[address]"),  # UK postcode
    (re.compile(r"\b(?:A[KLRZ]|C[AOT]|D[CE]|FL|GA|HI|I[ADLN]|K[SY]|LA|M[ADEINOST]|N[CDEHJMVY]|O[HKR]|PA|RI|"
                r"S[CD]|T[NX]|UT|V[AT]|W[AIVY]),?\s+\d{5}(?:-\d{4})?\b"), "[address]"),  # US state + ZIP
    # Names the text marks as names.
    (re.compile(r"\b((?i:my name is|my name's|my names|i am called|i'm called|name here is))\s+"
                r"[A-Za-z][a-z]+(?:\s+[A-Z][a-z]+)?"), r"\1 [name]"),
    (re.compile(rf"\b((?i:call me|this is|it's|it is))\s+(?!(?i:{_NOT_NAMES})\b){_FULL_NAME}(?=\s*(?:[,.!?]|$| here\b))"),
     r"\1 [name]"),
    (re.compile(rf"\b((?i:i'm|i am|im))\s+(?!(?i:{_NOT_NAMES})\b){_FULL_NAME}(?=\s*(?:[,.!?]|$))"), r"\1 [name]"),
    (re.compile(rf"(^|\n|[.!?]\s+)((?i:hi|hello|hey|dear|good morning|good evening))\s+(?!(?i:{_NOT_NAMES})\b)"
                rf"{_FULL_NAME}(?=\s*[,!.:\n])"), r"\1\2 [name]"),
    (re.compile(rf"\b((?i:thanks|thank you|cheers|regards|best wishes|best|love|sincerely|yours))(,?\s*\n?\s*)"
                rf"(?!(?i:{_NOT_NAMES})\b){_FULL_NAME}\s*[.!]?\s*$"), r"\1\2[name]"),
    (re.compile(rf"\b(Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Professor|Doctor|Nurse)(\.?\s+){_FULL_NAME}"), r"\1\2[name]"),
    (re.compile(rf"\b((?i:my|our) (?i:{_RELATIVES})(?:'s)?),?\s+(?!(?i:{_NOT_NAMES})\b){_NAME}\b"), r"\1 [name]"),
]


def scrub(text: str) -> str:
    """``text`` with emails, links, dates, phone numbers, addresses and marked names replaced."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
