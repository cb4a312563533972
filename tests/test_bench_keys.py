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
        model=str(REFMODEL),
        calib=str(CALIB),
        eval=str(EVAL),
        seqlen=256,
        nsamples=64,
        oneshot_only=False,
        max_rows=0,
        page="summary",
        model_shown=run.display_path(REFMODEL),
        model_source=None,
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


def other_model(tmp_path: Path) -> argparse.Namespace:
    """args() for another model's page (run.py --model FOLDER --page other)."""
    folder = tmp_path / "other-model"
    folder.mkdir(exist_ok=True)
    a = args()
    a.model, a.page, a.model_shown, a.model_source = str(folder), "other", "OTHER", "f" * 64
    return a


def test_rows_of_two_models_never_share_a_key_or_an_output(tmp_path):
    """run.py --page: another model's rows are keyed by that model (its placeholder in the command
    and the ``model`` component, its source checksum) and keep their pruned outputs apart."""
    job = run.Job("uniform", "wanda", 0.5, "wanda")
    ref, ref_recovery = run.keys_of(job, {}, args(), texts(), "v1")
    other, other_recovery = run.keys_of(job, {}, other_model(tmp_path), texts(), "v1")
    assert ref["model"] == "../shared/refmodel" and other["model"] == "OTHER"
    assert "llmprune uniform OTHER -o OUT" in other["command"] and other["model_source"] == "f" * 64
    assert "model_source" not in ref  # the reference model's keys are as before
    assert key_text(ref) != key_text(other) and key_text(ref_recovery) != key_text(other_recovery)
    assert run.output_of(job) != run.output_of(job, "other")
    assert run.output_of(job).name == "run-uniform-wanda-0.5"  # the summary's kept outputs keep their names


def test_page_follows_the_model(tmp_path):
    parser = argparse.ArgumentParser()
    a = argparse.Namespace(model=str(REFMODEL), page=None)
    run.resolve_model(parser, a)
    assert a.page == "summary" and a.model_shown == "../shared/refmodel" and a.model_source is None
    folder = tmp_path / "m"
    folder.mkdir()
    for page in (None, "summary"):  # another folder: a page of its own, never the summary
        with pytest.raises(SystemExit):
            run.resolve_model(parser, argparse.Namespace(model=str(folder), page=page))
    (folder / "llmprune_source.json").write_text(json.dumps({"member_sha256": "a" * 64}))
    a = argparse.Namespace(model=str(folder), page="mine")
    run.resolve_model(parser, a)
    assert a.page == "mine" and a.model_source == "a" * 64


def test_oneshot_only_shows_one_shot_rows_without_recovery(tmp_path):
    """--oneshot-only: a cached one-shot part is a row (no recovery column); a row that only
    recovers another row's output again is left out, named as not measured."""
    a = other_model(tmp_path)
    a.oneshot_only = True
    job = run.Job("uniform", "wanda", 0.5, "wanda")
    again = run.with_recovered_again(job)[1]
    part = {**cached_part("wanda"), "speedup_decode": 1.5}  # measured: nothing to complete
    real = {"calib": run.text_hash(CALIB), "eval": run.text_hash(EVAL)}
    oneshot, _ = run.keys_of(job, {}, a, real)
    cache = {"oneshot": {key_text(oneshot): part}, "recovery": {}}
    rows, missing, stale = run.collect([job, again], cache, a, set(), stale_ok=False)
    assert [r["perplexity"] for r in rows] == [50.0] and rows[0].get("perplexity_recovered") is None
    assert missing == ["uniform wanda, recovery --nsamples 256 50%"] and stale == []


def test_an_edit_to_one_method_stales_its_rows_and_no_other_methods(monkeypatch):
    """The code version leaves out the other methods' files (methods never import each other, a
    contract CI checks): an edit to Týr's search changes Týr's key only; an edit to shared code
    (the masks) changes every method's and the recovery's."""
    import common

    def versions() -> dict[str, str]:
        pairs = [("global", "tyr"), ("uniform", "wanda"), ("semi24", "proxsparse"), ("uniform", "minimax")]
        return {m: common.code_version(s, m) for s, m in pairs} | {"recovery": common.code_version()}

    before = versions()
    real = Path.read_bytes

    def edited(target: str):
        def read(path: Path) -> bytes:
            return real(path) + (b"# edit" if path.as_posix().endswith(target) else b"")

        return read

    monkeypatch.setattr(Path, "read_bytes", edited("llmprune/pruners/tyr/search.py"))
    after = versions()
    assert [m for m in before if before[m] != after[m]] == ["tyr"]
    monkeypatch.setattr(Path, "read_bytes", edited("llmprune/core/masks.py"))
    assert all(before[m] != v for m, v in versions().items())
    assert common.method_files("uniform", "wanda") == common.method_files("semi24", "sparsegpt")  # one module
