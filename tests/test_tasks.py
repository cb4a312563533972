"""`llmprune eval --tasks`: lm-evaluation-harness on a small local multiple-choice task (no network)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import REFMODEL, read_json, requires_refmodel
from helpers import run_cli as run

TASK = "llmprune_easy"

#: (context, choices, index of the answer). Real continuations against letter salad: a trained
#: model should get nearly all of them; chance is 1/3.
QUESTIONS = [
    ("The quick brown fox jumps over the lazy", [" dog", " xqzv", " blorpt"], 0),
    ("import os\nimport", [" qqxz", " sys", " zzkw"], 1),
    ("def add(a, b):\n    return a +", [" b", " vvq", " jjx"], 0),
    ("for i in range(10):\n    print(", [" xjq", " zzv", "i)"], 2),
    ("Python is a programming", [" language", " qxzv", " wjkb"], 0),
    ("The", [" zqx", " first", " xvv"], 1),
    ("if x is None:\n    return", [" None", " qjxz", " vzzk"], 0),
    ("Debian is a free operating", [" xqv", " jzzq", " system"], 2),
]

TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_target: answer
doc_to_choice: "{{{{choices}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    data = folder / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    (folder / "easy.yaml").write_text(TASK_YAML.format(task=TASK, data=data))
    return folder


def test_tasks_on_a_random_model_report_settings_and_metrics(model_dir, task_dir, tmp_path):
    out = tmp_path / "report.json"
    result = run("eval", model_dir, "--tasks", task_dir / "easy.yaml", "--json", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = read_json(out)
    assert "perplexity" not in report and report["data"] is None, "with --tasks, perplexity only when --data is given"
    tasks = report["tasks"]
    settings = tasks["settings"]
    assert settings["tasks"] == [str(task_dir / "easy.yaml")]
    assert settings["num_fewshot"] == 0 and settings["limit"] is None and settings["batch_size"] == 8
    assert settings["lm_eval_version"] and settings["device"] == "cpu" and settings["dtype"] == "float32"
    row = tasks["results"][TASK]
    assert row["n_samples"] == len(QUESTIONS) == row["n_available"]
    for metric in ("acc", "acc_norm"):
        assert 0.0 <= row[metric] <= 1.0 and row[f"{metric}_stderr"] >= 0.0
    assert TASK in result.output and "acc_norm" in result.output, "the terminal shows a task table"


def test_tasks_with_perplexity_limit_and_fewshot(model_dir, task_dir, tmp_path):
    from helpers import SAMPLE_TEXT

    text = tmp_path / "eval.txt"
    text.write_text(SAMPLE_TEXT)
    out = tmp_path / "report.json"
    result = run(
        "eval",
        model_dir,
        "--data",
        text,
        "--seqlen",
        "32",
        "--tasks",
        task_dir,
        "--task-limit",
        "3",
        "--num-fewshot",
        "1",
        "--task-batch-size",
        "2",
        "--json",
        out,
    )
    assert result.exit_code == 0, result.output
    report = read_json(out)
    assert report["perplexity"] > 1 and report["seqlen"] == 32
    settings = report["tasks"]["settings"]
    assert settings["tasks"] == [str(task_dir)] and settings["resolved"] == [TASK], "a folder runs the tasks it holds"
    assert settings["limit"] == 3 and settings["num_fewshot"] == 1 and settings["batch_size"] == 2
    row = report["tasks"]["results"][TASK]
    assert row["n_samples"] == 3 and row["n_available"] == len(QUESTIONS) and row["num_fewshot"] == 1


@requires_refmodel
def test_reference_model_beats_chance_on_an_easy_task(task_dir, tmp_path):
    out = tmp_path / "report.json"
    result = run("eval", REFMODEL, "--tasks", task_dir / "easy.yaml", "--json", out)
    assert result.exit_code == 0, result.output
    row = read_json(out)["tasks"]["results"][TASK]
    assert row["n_samples"] == len(QUESTIONS)
    assert row["acc"] >= 0.75 and row["acc_norm"] >= 0.75, row  # chance: 1/3


def test_missing_lm_eval_is_one_clear_line(model_dir, task_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    out = tmp_path / "report.json"
    result = run("eval", model_dir, "--tasks", task_dir / "easy.yaml", "--json", out)
    assert result.exit_code == 10, result.output
    assert result.output.strip() == "error: --tasks needs lm-evaluation-harness: pip install 'llmprune[tasks]'"
    assert not out.exists()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_task_xyz", "unknown task 'no_such_task_xyz'"),
        ("missing/easy.yaml", "task file or folder not found"),
    ],
)
def test_unknown_task_is_one_clear_line(model_dir, spec, message):
    result = run("eval", model_dir, "--tasks", spec)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    if "unknown" in message:
        assert "lm-eval ls tasks" in result.output, "tells how to find task names"


def test_task_options_need_tasks(model_dir):
    result = run("eval", model_dir, "--task-limit", "3")
    assert result.exit_code == 2 and "add --tasks" in result.output
