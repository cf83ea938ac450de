"""The lm-evaluation-harness export runs in lm-eval itself, offline, on the tiny local model, and
lm-eval's acc and acc_norm (and the lettered task's acc) agree with the project's scorer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import evaluate as ev
from pipeline.lm_eval_export import export_lm_eval

# Run in a child process so that the offline switches are read before datasets/huggingface_hub
# are imported, whatever other tests imported first.
LM_EVAL_SCRIPT = r"""
import json, sys
import lm_eval
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

model, include, tasks = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
lm = HFLM(pretrained=model, device="cpu", batch_size=8)
out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=include), log_samples=True)
samples = {t: [{"id": s["doc"]["id"], "lls": [r[0] for r in s["filtered_resps"]]} for s in out["samples"][t]] for t in tasks}
print("RESULT " + json.dumps({"results": out["results"], "samples": samples}))
"""


@pytest.mark.slow
def test_exported_task_runs_in_lm_eval_and_agrees_with_our_scorer(tiny_model_dir, tmp_path) -> None:
    from pipeline.packs import PACKS_DIR, load_pack

    pack = load_pack(PACKS_DIR / "hyperhidrosis")
    info = export_lm_eval(tmp_path / "tasks", pack, tiny_model_dir, limit_per_task=4)
    split = ev.splits_of(ev.questions_from_pack(pack, 4))[-1]
    plain, lettered = f"hyperhidrosis_{split}", f"hyperhidrosis_{split}_lettered"
    assert plain in info["tasks"] and lettered in info["tasks"]
    row = json.loads((tmp_path / "tasks" / f"hyperhidrosis_{split}.jsonl").read_text().splitlines()[0])
    assert row["prompt"].startswith("<|begin_of_text|><|start_header_id|>system")
    assert pack.guidance.strip()[:60] not in row["prompt"]  # closed book
    assert row["lettered_prompt"].endswith("Answer:") and row["letters"] == ["A", "B", "C", "D"]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", LM_EVAL_SCRIPT, str(tiny_model_dir), str(tmp_path / "tasks"),
                           f"{plain},{lettered}"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    theirs = json.loads(line[len("RESULT "):])

    questions = [q for q in ev.questions_from_pack(pack, 4) if q.split == split]
    report = ev.evaluate(tiny_model_dir, [ev.Subject(ev.BASE_LABEL)], pack,
                         ev.EvalConfig(limit_per_task=4, safety=False, controls=False))
    ours = report["runs"][ev.BASE_LABEL]
    metrics = ours["splits"][split]["metrics"]
    assert theirs["results"][plain]["acc,none"] == pytest.approx(metrics["acc"]["overall"]["accuracy"], abs=1e-4)
    assert theirs["results"][plain]["acc_norm,none"] == pytest.approx(metrics["acc_norm"]["overall"]["accuracy"],
                                                                      abs=1e-4)
    assert theirs["results"][lettered]["acc,none"] == pytest.approx(metrics["lettered"]["overall"]["accuracy"],
                                                                    abs=1e-4)
    # Not only the totals: every option's log-likelihood is the same number.
    by_id = {a["id"]: a for a in ours["answers"] if a["split"] == split}
    assert len(theirs["samples"][plain]) == len(questions)
    for sample in theirs["samples"][plain]:
        assert sample["lls"] == pytest.approx([s for s, _ in by_id[sample["id"]]["scores"]], abs=2e-3)
    for sample in theirs["samples"][lettered]:
        assert sample["lls"] == pytest.approx(by_id[sample["id"]]["letter_scores"], abs=2e-3)


def test_export_writes_a_task_per_split_and_format(tiny_model_dir, tmp_path) -> None:
    import yaml

    from pipeline.packs import PACKS_DIR, load_pack

    pack = load_pack(PACKS_DIR / "hyperhidrosis")
    info = export_lm_eval(tmp_path, pack, tiny_model_dir, limit_per_task=2, open_book=True)
    splits = ev.splits_of(ev.questions_from_pack(pack, 2))
    assert info["book"] == "open" and len(info["tasks"]) == 2 * len(splits)
    for split in splits:
        task = yaml.safe_load((tmp_path / f"hyperhidrosis_{split}.yaml").read_text())
        assert task["output_type"] == "multiple_choice" and task["target_delimiter"] == ""
        assert [m["metric"] for m in task["metric_list"]] == ["acc", "acc_norm"]
        assert Path(task["dataset_kwargs"]["data_files"]["test"]).is_file()
        letters = yaml.safe_load((tmp_path / f"hyperhidrosis_{split}_lettered.yaml").read_text())
        assert letters["target_delimiter"] == " " and letters["doc_to_text"] == "lettered_prompt"
        rows = [json.loads(x) for x in (tmp_path / f"hyperhidrosis_{split}.jsonl").read_text().splitlines()]
        assert len(rows) == 2 * len(pack.tasks) and all(r["split"] == split for r in rows)
        assert pack.guidance.strip()[:60] in rows[0]["prompt"]  # open book, as asked
