"""bench_safety.py --blind scores only the blind set it is told to (issue 14): an untouched set kept
for a later session is never scored beside the one being scored. Uses a temporary folder, never
tests/data/safety_blind/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_safety.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_safety_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_blind_sets_are_scored_by_name_only(bench, tmp_path):
    for name in ("B4", "B5"):
        (tmp_path / f"{name}.jsonl").write_text('{"text": "x", "label": "benign"}\n', encoding="utf-8")
    assert bench.blind_files(["B4"], tmp_path) == [tmp_path / "B4.jsonl"]
    assert bench.blind_files(["B5.jsonl"], tmp_path) == [tmp_path / "B5.jsonl"]
    with pytest.raises(ValueError, match="name the one to score"):
        bench.blind_files([], tmp_path)  # two sets there: bare --blind would spend both
    with pytest.raises(ValueError, match="no blind set"):
        bench.blind_files(["B3"], tmp_path)
    (tmp_path / "B5.jsonl").unlink()
    assert bench.blind_files([], tmp_path) == [tmp_path / "B4.jsonl"]  # the only one: as before
