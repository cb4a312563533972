"""benchmarks/selection.py's held-out split (issue 30): contiguous regions of whole paragraphs of
calib.txt, every fourth the select split; the two splits partition the text, and a heading never
ends a region (so it is never split from its body)."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from common import CALIB  # noqa: E402
from selection import (  # noqa: E402
    REGION_CHARS,
    SELECT_EVERY,
    calibration_regions,
    is_heading,
    split_calibration,
    split_identity,
    split_text,
)

TEXT = CALIB.read_text()
REGIONS = calibration_regions(TEXT)


def paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def test_regions_tile_the_text_in_order_and_hold_whole_paragraphs():
    assert REGIONS[0][0] == 0 and REGIONS[-1][1] == len(TEXT)
    assert all(a[1] == b[0] for a, b in zip(REGIONS, REGIONS[1:]))  # contiguous, no gap or overlap
    for start, end in REGIONS:
        assert start == 0 or TEXT[start - 2 : start] == "\n\n"  # begins a paragraph
        assert end == len(TEXT) or TEXT[end - 2 : end] == "\n\n"  # ends after a blank line
        assert end - start >= REGION_CHARS


def test_select_and_fit_partition_the_text():
    fit, held = split_text(TEXT)
    assert len(fit) + len(held) == len(REGIONS) and len(held) == len(REGIONS) // SELECT_EVERY
    assert sum(map(len, fit)) + sum(map(len, held)) == len(TEXT)
    # every paragraph in exactly one split (as a multiset: a few fortunes repeat in calib.txt)
    assert Counter(paragraphs("".join(fit))) + Counter(paragraphs("".join(held))) == Counter(paragraphs(TEXT))
    fraction = sum(map(len, held)) / len(TEXT)
    assert 0.2 < fraction < 0.3


def test_no_select_text_occurs_in_fit():
    """A line of 40+ characters of the select split occurs in the fit split only when calib.txt
    repeats it elsewhere (boilerplate such as ``.. =====`` rules and table borders)."""
    fit, held = split_text(TEXT)
    fit_lines = set("".join(fit).split("\n"))
    counts = Counter(TEXT.split("\n"))
    shared = [line for line in "".join(held).split("\n") if len(line) >= 40 and line in fit_lines]
    assert all(counts[line] > 1 for line in shared)
    # and no select region's opening or closing stretch reappears in the fit split
    joined_fit = "".join(fit)
    for region in held:
        body = region.strip("\n")
        assert body[:200] not in joined_fit and body[-200:] not in joined_fit


def test_a_heading_stays_with_its_body():
    heads = 0
    for start, end in REGIONS[:-1]:
        last = paragraphs(TEXT[start:end])[-1]
        assert not is_heading(last), last
    for p in paragraphs(TEXT):
        heads += is_heading(p)
    assert heads > 50  # the text has section titles: the rule is exercised
    assert is_heading("Pickle protocol 5\n-----------------") and is_heading("=====\nTitle\n=====")
    assert not is_heading(".. ======================================================================")


def test_small_text_rules():
    text = "a" * 5 + "\n\nTitle\n=====\n\n" + "b" * 5 + "\n\n" + "c" * 3 + "\n"
    regions = calibration_regions(text, min_chars=6)
    # "aaaaa\n\n" reaches 6 characters: the first region; the second reaches 6 with the title but
    # may not end on it, so it closes after "bbbbb"; "ccc" (short) joins it
    assert [text[a:b] for a, b in regions] == ["aaaaa\n\n", "Title\n=====\n\nbbbbb\n\nccc\n"]
    # a short remainder joins the last region
    assert calibration_regions("x" * 10 + "\n\n" + "y", min_chars=6) == [(0, 13)]


def test_deterministic(tmp_path):
    assert calibration_regions(TEXT) == REGIONS
    assert split_text(TEXT) == split_text(TEXT)
    assert split_identity() == split_identity(TEXT)
    fit_path, held_path = split_calibration(tmp_path)
    fit, held = split_text(TEXT)
    assert fit_path.read_text() == "".join(fit) and held_path.read_text() == "".join(held)
    # the identity follows the select text: a changed select character changes it, a fit one not
    select_start, fit_start = REGIONS[SELECT_EVERY - 1][0], REGIONS[0][0]
    flip = {"a": "b"}
    for at, changes in ((select_start + 100, True), (fit_start + 100, False)):
        other = TEXT[:at] + flip.get(TEXT[at], "a") + TEXT[at + 1 :]
        assert (split_identity(other) != split_identity(TEXT)) is changes


def test_an_interrupted_grid_run_keeps_the_rows_it_has_not_reached(tmp_path, monkeypatch):
    """Re-running a grid used to drop every old row of that grid from select.json at the first
    save, so a run cut short lost the rows it had not re-measured yet (recovery-50 and three more
    grids were lost so and restored from git). They now stay until each is re-run."""
    import json

    import pytest
    import selection

    grid = selection.Grid("uniform", "wanda", 0.5, vary={"sparsity_note": ["a", "b"]})
    old = [
        {"grid": "g", "setting": f"sparsity_note={v}", "vary": {"sparsity_note": v}, "perplexity": 1.0, "key": "{}"}
        for v in "ab"
    ]
    monkeypatch.setattr(selection, "RESULTS", tmp_path)
    monkeypatch.setattr(selection, "SELECT_WORK", tmp_path / "work")
    (tmp_path / "select.json").write_text(json.dumps({"rows": old}))
    monkeypatch.setattr(selection, "evaluate", lambda *a, **k: {"perplexity": 39.0})
    calls = []

    def run_row(name, g, vary, *rest):
        if calls:
            raise KeyboardInterrupt  # the run is cut short before its second row
        calls.append(vary)
        return {**old[0], "perplexity": 2.0, "code_version": "new"}

    monkeypatch.setattr(selection, "run_row", run_row)
    with pytest.raises(KeyboardInterrupt):
        selection.measure(["g"], grids={"g": grid})
    saved = {r["setting"]: r["perplexity"] for r in json.loads((tmp_path / "select.json").read_text())["rows"]}
    assert saved == {"-": 39.0, "sparsity_note=a": 2.0, "sparsity_note=b": 1.0}
