"""The benchmarks' one row key (benchmarks/common.py ``row_key``, used by run.py and selection.py):
every default that reaches a run, the text hashes, the split and the code version are in it, and
a row cached under another key is reported stale with the component that changed. No pruning."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import run  # noqa: E402
import selection  # noqa: E402
from common import CALIB, EVAL, REFMODEL, key_text, row_key, stale_reasons  # noqa: E402

from llmprune.pruners.base import get_pruner_class  # noqa: E402


def args() -> argparse.Namespace:
    return argparse.Namespace(
        model=str(REFMODEL), calib=str(CALIB), eval=str(EVAL), seqlen=256, nsamples=64, oneshot_only=False, max_rows=0
    )


def texts() -> dict[str, str]:
    return {"calib": "c" * 16, "eval": "e" * 16}


def set_default(monkeypatch: pytest.MonkeyPatch, strategy: str, method: str, option: str, value) -> None:
    field = get_pruner_class(strategy, method).Options.model_fields[option]
    monkeypatch.setattr(field, "default", value)


def test_key_holds_command_defaults_texts_and_code():
    key = row_key("llmprune x", texts=texts(), strategy="global", method="tyr", recovery="flag", code="v1")
    assert set(key) == {"command", "defaults", "texts", "code"}
    assert key["defaults"]["method"]["percdamp"] == get_pruner_class("global", "tyr").Options().percdamp
    assert "recover_nsamples" in key["defaults"]["recover"] and "default_lr" in key["defaults"]["recover"]
    assert "checkpoint_every" not in key["defaults"]["method"]  # never changes a result
    # run.py's keys and selection.py's keys are the same function's
    job = run.Job("global", "tyr", 0.5, "tyr")
    oneshot, recovery = run.keys_of(job, {}, args(), texts(), "v1")
    assert oneshot["code"] == recovery["code"] == "v1" and recovery["oneshot"] == oneshot
    grid = selection.GRIDS["tyr-seeds"]
    chosen = selection.select_key(grid, {**grid.base, **grid.jobs()[0]}, "v1")
    assert {"command", "defaults", "texts", "code", "split"} <= set(chosen) and chosen["split"].startswith("regions")


def test_a_changed_default_changes_the_key(monkeypatch):
    job = run.Job("global", "tyr", 0.5, "tyr")
    before = run.keys_of(job, {}, args(), texts(), "v1")
    grid = selection.GRIDS["tyr-seeds"]
    options = {**grid.base, **grid.jobs()[0]}
    select_before = selection.select_key(grid, options, "v1", "split")
    set_default(monkeypatch, "global", "tyr", "percdamp", 0.5)
    after = run.keys_of(job, {}, args(), texts(), "v1")
    assert key_text(after[0]) != key_text(before[0]) and key_text(after[1]) != key_text(before[1])
    assert before[0]["command"] == after[0]["command"]  # the same command line: only the default moved
    select_after = selection.select_key(grid, options, "v1", "split")
    assert key_text(select_after) != key_text(select_before)
    ((kind, detail),) = stale_reasons(before[0], after[0])
    assert kind == "default" and detail.startswith("method.percdamp:") and detail.endswith("→ 0.5")


def test_a_changed_text_hash_or_split_or_code_changes_the_key():
    base = row_key("llmprune x", texts=texts(), strategy="uniform", method="wanda", code="v1", split="s1")
    for changed, kind in (
        (
            row_key(
                "llmprune x",
                texts={**texts(), "eval": "f" * 16},
                strategy="uniform",
                method="wanda",
                code="v1",
                split="s1",
            ),
            "text",
        ),
        (row_key("llmprune x", texts=texts(), strategy="uniform", method="wanda", code="v1", split="s2"), "split"),
        (
            row_key("llmprune x", texts=texts(), strategy="uniform", method="wanda", code="v2", split="s1"),
            "code version",
        ),
    ):
        assert key_text(changed) != key_text(base)
        assert [k for k, _ in stale_reasons(base, changed)] == [kind]
    assert stale_reasons(base, dict(base)) == []


def cached_part(label: str) -> dict:
    return {"strategy": "uniform", "method": "wanda", "label": label, "achieved_sparsity": 0.5, "perplexity": 50.0}


def test_cached_only_names_the_stale_component(monkeypatch, capsys):
    """run.py --cached-only: a row cached under an older code version, or before a default
    changed, is used, marked stale, and printed with that component."""
    job = run.Job("uniform", "wanda", 0.5, "wanda", recover=False)
    a = args()
    real = {"calib": run.text_hash(CALIB), "eval": run.text_hash(EVAL)}
    old_code, _ = run.keys_of(job, {}, a, real, "0123456789abcdef")
    cache = {"oneshot": {key_text(old_code): cached_part("wanda")}, "recovery": {}}
    rows, missing, stale = run.collect([job], cache, a, set(), stale_ok=True)
    assert not missing and rows[0]["perplexity"] == 50.0
    ((name, reasons),) = stale
    assert name == "uniform wanda 50%" and [k for k, _ in reasons] == ["code version"]
    assert "stale: uniform wanda 50%: code version (one-shot code: 0123456789abcdef → " in capsys.readouterr().out

    current, _ = run.keys_of(job, {}, a, real)
    cache = {"oneshot": {key_text(current): cached_part("wanda")}, "recovery": {}}
    assert run.collect([job], cache, a, set(), stale_ok=True)[2] == []  # current: not stale
    option = next(iter(get_pruner_class("uniform", "wanda").Options.model_fields))
    set_default(monkeypatch, "uniform", "wanda", option, "changed")
    rows, _, stale = run.collect([job], cache, a, set(), stale_ok=True)
    assert [k for k, _ in stale[0][1]] == ["default"] and f"method.{option}" in rows[0]["stale"]


def test_old_keys_are_read_with_what_they_recorded():
    """Keys written before issue 30 keep their measured code version (run.py: from the part) and
    their split (selection.py: the paragraph split), so they are stale for those reasons."""
    old = {
        "defaults": {"method": {}},
        "model": "m",
        "prune": "llmprune p",
        "recover": False,
        "seqlen": 256,
        "texts": {},
    }
    cache = run.upgrade_keys({"oneshot": {json.dumps(old): {"code_version": "abc"}}, "recovery": {}})
    (key,) = map(json.loads, cache["oneshot"])
    assert key["command"] == "llmprune p" and key["code"] == "abc" and "prune" not in key
    legacy = {"calib_sha256": "c" * 16, "code": "abc", "command": "llmprune q", "seed": 0}
    upgraded = selection.upgraded(json.dumps(legacy))
    assert upgraded["split"] == selection.LEGACY_SPLIT and upgraded["code"] == "abc"
    grid = selection.GRIDS["tyr-seeds"]
    wanted = selection.select_key(grid, {**grid.base, **grid.jobs()[0]})
    kinds = {k for k, _ in stale_reasons(upgraded, wanted)}
    assert {"split", "code version", "default not recorded", "text"} <= kinds


def test_select_stale_report_reads_keys_only(tmp_path, monkeypatch):
    grid = selection.GRIDS["tyr-seeds"]
    vary = grid.jobs()[0]
    current = selection.select_key(grid, {**grid.base, **vary})
    older = {**current, "code": "0" * 16}
    rows = [
        {"grid": "tyr-seeds", "setting": "a", "vary": vary, "key": key_text(current)},
        {"grid": "tyr-seeds", "setting": "b", "vary": vary, "key": key_text(older)},
    ]
    (tmp_path / "select.json").write_text(json.dumps({"rows": rows}))
    monkeypatch.setattr(selection, "RESULTS", tmp_path)
    report = dict(selection.stale_report())
    assert report["tyr-seeds a"] == [] and [k for k, _ in report["tyr-seeds b"]] == ["code version"]
    # --cached-only's row lookup takes the nearest cached row of the same setting, marked stale
    cache = {r["key"]: r for r in rows[1:]}
    row = selection.stale_row(cache, current, "tyr-seeds", vary)
    assert row is not None and row["stale"].startswith("code version")


def test_key_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    grid = selection.GRIDS["tyr-seeds"]
    options = {**grid.base, **grid.jobs()[0]}
    here = selection.select_key(grid, options, "v1", "s")
    monkeypatch.chdir(tmp_path)
    assert selection.select_key(grid, options, "v1", "s") == here
    assert "--calib CALIB_FIT " in here["command"]


def test_stale_command_names_the_words_that_differ():
    old = {"command": "llmprune global examples/refmodel -o OUT --method tyr --sparsity 0.5 --seqlen 256"}
    new = {"command": "llmprune global ../shared/refmodel -o OUT --method tyr --sparsity 0.5 --seqlen 256"}
    assert stale_reasons(old, new) == [("command", "command: [examples/refmodel] → [../shared/refmodel]")]


def test_cached_only_names_a_stale_recovery_part():
    """The one-shot part current, the recovery part measured at another code version: only the
    recovery is named."""
    job = run.Job("uniform", "wanda", 0.5, "wanda")
    a = args()
    real = {"calib": run.text_hash(CALIB), "eval": run.text_hash(EVAL)}
    oneshot, recovery = run.keys_of(job, {}, a, real)
    old = {**recovery, "code": "0" * 16}
    cache = {
        "oneshot": {key_text(oneshot): cached_part("wanda")},
        "recovery": {key_text(old): {"perplexity_recovered": 45.0}},
    }
    rows, _, stale = run.collect([job], cache, a, set(), stale_ok=True)
    assert rows[0]["perplexity_recovered"] == 45.0
    ((_, reasons),) = stale
    assert reasons == [("code version", f"recovery code: {'0' * 16} → {recovery['code']}")]
