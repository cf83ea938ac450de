"""The labelled safety corpus that ships with the project, and where it comes from.

Only files under ``bot/safety/data/`` are read (plus a pack's own ``safety/crisis_train.jsonl``):

* ``corpus/<BATCH>.jsonl`` — batches written independently, each by its own writer, who saw
  neither the detector nor the other batches (format: ``id, text, label, family, lang, script,
  form, red_flag_id``; labels ``crisis | red_flag | benign | injection``). The batch name is the
  file name, and it is the unit of leave-one-writer-out cross-validation.
* ``crisis_train.jsonl`` — the legacy batch (``text, crisis, kind, lang``), mapped onto the same
  four labels: crisis kinds → crisis, ``red_flag_not_emergency`` → red_flag (no id),
  ``injection`` → injection, everything else → benign.

Nothing under ``tests/`` is ever read here: the red-team set and the blind set are scored, never
trained on.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

SAFETY_DATA = Path(__file__).resolve().parent / "data"
CORPUS_DIR = SAFETY_DATA / "corpus"
LEGACY = SAFETY_DATA / "crisis_train.jsonl"
# Corpus rows left out of training, one id per line (``id<TAB>why``): rows that nearly repeat a
# red-team message (written independently, but the red-team figures must not be trained on).
# ``python bench/bench_safety.py --update-exclusions`` rewrites it.
EXCLUDED = SAFETY_DATA / "excluded.tsv"
LABELS = ("benign", "crisis", "injection", "red_flag")

_LEGACY_LABEL = {
    "self_harm": "crisis", "harm_others": "crisis", "medical_emergency": "crisis",
    "red_flag_not_emergency": "red_flag", "injection": "injection",
}


@dataclass(frozen=True)
class Row:
    text: str
    label: str  # crisis | red_flag | benign | injection
    batch: str  # the writer's batch (file stem): the unit of leave-one-writer-out CV
    id: str = ""
    family: str = ""
    lang: str = ""
    script: str = ""
    form: str = ""
    red_flag_id: str = ""


# Unicode blocks → the corpus spec's script names (first letter that is not Latin/common decides).
_SCRIPTS = (
    (0x0370, 0x03FF, "Greek"), (0x1F00, 0x1FFF, "Greek"), (0x0400, 0x052F, "Cyrillic"),
    (0x0590, 0x05FF, "Hebrew"), (0x0600, 0x06FF, "Arabic"), (0x0750, 0x077F, "Arabic"),
    (0xFB50, 0xFDFF, "Arabic"), (0xFE70, 0xFEFF, "Arabic"), (0x0900, 0x097F, "Devanagari"),
    (0x0980, 0x09FF, "Bengali"), (0x0E00, 0x0E7F, "Thai"), (0x3040, 0x30FF, "Japanese"),
    (0x4E00, 0x9FFF, "Han"), (0x3400, 0x4DBF, "Han"), (0xAC00, 0xD7AF, "Hangul"), (0x1100, 0x11FF, "Hangul"),
    (0x3130, 0x318F, "Hangul"), (0xFF66, 0xFF9F, "Japanese"),  # compatibility jamo (ㅎㅇ), half-width kana
)


_LATIN_NAMES = ("LATIN", "FULLWIDTH LATIN", "MODIFIER LETTER")
UNREADABLE_SCRIPT = "Other"  # script_of: a script no training batch covers


def script_of(text: str) -> str:
    """The main non-Latin script of a text (Han with any kana is Japanese), else Latin; ``Other``
    when most of its letters are in a script none of the above (Tamil, Georgian, Amharic …): no
    batch has taught the model that script, so the detector must not read it as Latin text."""
    counts: dict[str, int] = {}
    unknown = 0
    for ch in text:
        cp = ord(ch)
        if cp < 0x0370:
            continue
        for lo, hi, name in _SCRIPTS:
            if lo <= cp <= hi:
                counts[name] = counts.get(name, 0) + 1
                break
        else:
            unknown += ch.isalpha() and not unicodedata.name(ch, "").startswith(_LATIN_NAMES)
    if not counts:
        if unknown >= 2 and unknown * 2 >= sum(1 for ch in text if ch.isalpha()):
            return UNREADABLE_SCRIPT
        return "Latin"
    if "Japanese" in counts and "Han" in counts:
        return "Japanese"
    letters = sum(1 for ch in text if unicodedata.category(ch).startswith("L"))
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] * 4 >= letters or counts[best] >= 4 else "Latin"


def corpus_files(pack: Any = None) -> list[Path]:
    """Every training file, in a fixed order (the corpus hash and the model depend on it)."""
    files = sorted(CORPUS_DIR.glob("*.jsonl")) if CORPUS_DIR.is_dir() else []
    if LEGACY.is_file():
        files.append(LEGACY)
    pack_path = getattr(pack, "path", None)
    if pack_path is not None:
        extra = Path(pack_path) / "safety" / "crisis_train.jsonl"
        if extra.is_file():
            files.append(extra)
    return files


def corpus_hash(files: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def training_hash(files: Iterable[Path]) -> str:
    """The key of a model trained on ``files``: their bytes and the exclusions ``load_corpus``
    applies to them (a changed ``excluded.tsv`` alone changes the rows trained on)."""
    files = list(files)
    return corpus_hash([*files, EXCLUDED] if EXCLUDED.is_file() else files)


def _row(data: dict[str, Any], batch: str, where: str) -> Row:
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: no text")
    if "label" in data:
        label = str(data["label"]).strip().lower()
        if label not in LABELS:
            raise ValueError(f"{where}: unknown label {label!r}")
    elif "crisis" in data:  # the legacy format
        label = "crisis" if data["crisis"] else _LEGACY_LABEL.get(str(data.get("kind", "")), "benign")
    else:
        raise ValueError(f"{where}: neither label nor crisis")
    red_flag_id = str(data.get("red_flag_id") or "") if label == "red_flag" else ""
    return Row(
        text=text, label=label, batch=batch, id=str(data.get("id") or where),
        family=str(data.get("family") or data.get("kind") or ""), lang=str(data.get("lang") or "").split("-misspelled")[0],
        script=str(data.get("script") or script_of(text)), form=str(data.get("form") or ""), red_flag_id=red_flag_id,
    )


def read_rows(path: Path, batch: str | None = None) -> list[Row]:
    """One file's rows; ``batch`` defaults to the file stem (``legacy`` for crisis_train.jsonl)."""
    name = batch or ("legacy" if path.name == "crisis_train.jsonl" else path.stem)
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path.name} line {n}: {exc}") from None
        out.append(_row(data, name, f"{path.name}:{n}"))
    return out


def excluded_ids(path: Path | None = None) -> set[str]:
    path = EXCLUDED if path is None else path
    if not path.is_file():
        return set()
    return {line.split("\t")[0].strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")}


def load_corpus(files: Iterable[Path], exclude: bool = True) -> list[Row]:
    rows: list[Row] = []
    seen: set[str] = set()
    skip = excluded_ids() if exclude else set()
    for path in files:
        for row in read_rows(path):
            key = row.text.strip()
            if key in seen:  # the same text twice would leak across CV folds
                continue
            seen.add(key)  # before the exclusion check: an excluded text stays out in every copy
            if row.id not in skip:
                rows.append(row)
    return rows
