"""Commands that need no model start without torch or transformers (issue 30).

The command line is built from the torch-free method table (``llmprune.pruners.registry`` and the
``*_options`` declarations); the implementations are imported when a run needs them. No timing here
(benchmarks/startup.py measures it): what is checked is what gets imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")


def python(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def imported_after(code: str) -> dict[str, bool]:
    """Which of torch / transformers ``code`` leaves in ``sys.modules`` (in a fresh interpreter)."""
    out = python(f"import json, sys\n{code}\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))")
    return json.loads(out.strip().splitlines()[-1])


def test_importing_the_cli_imports_neither_torch_nor_transformers():
    assert imported_after("import llmprune.cli") == {"torch": False, "transformers": False}


def test_the_method_table_and_its_options_import_neither():
    code = (
        "from llmprune.pruners.registry import STRATEGIES, cli_options, methods\n"
        "for s in STRATEGIES:\n"
        "    cli_options(s)\n"
        "    [cls.Options() for cls in methods(s).values()]\n"
        "import llmprune.train.recovery_options"
    )
    assert imported_after(code) == {"torch": False, "transformers": False}


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["uniform", "--help"],
        ["global", "--help"],
        ["semi24", "--help"],
        ["recover", "--help"],
        ["uniform", "M", "-o", "X", "--sparsity", "abc"],  # the parser's usage error
        ["uniform", "M", "-o", "X", "--method", "wanda", "--lora-rank", "8"],  # another method's flag
        ["uniform", "M", "-o", "X", "--method", "nope"],  # an unknown method
    ],
    ids=" ".join,
)
def test_commands_that_need_no_model_import_neither(args):
    code = f"from llmprune.cli import app\ntry:\n    app({args!r}, prog_name='llmprune')\nexcept SystemExit:\n    pass"
    assert imported_after(code) == {"torch": False, "transformers": False}


@pytest.mark.parametrize(
    "strategy, flags",
    [
        ("uniform", ["--lora-rank", "--steps", "--widths", "--checkpoint-every", "--recover-lora-rank"]),
        ("global", ["--generations", "--offspring", "--mlp-rounds", "--widths"]),
        ("semi24", ["--lambda1", "--layers-per-stage", "--init-mask"]),
    ],
)
def test_help_of_every_command_lists_its_method_flags(strategy, flags):
    from typer.testing import CliRunner

    from llmprune.cli import app

    result = CliRunner().invoke(app, [strategy, "--help"], env={"COLUMNS": "4000", "TERMINAL_WIDTH": "4000"})
    assert result.exit_code == 0, result.output
    for flag in flags:
        assert flag in result.output, flag


def test_every_declared_method_is_implemented_by_a_subclass_of_its_declaration():
    """The table names each implementation; running a method imports it (and torch)."""
    from llmprune.pruners.base import Pruner, get_pruner_class
    from llmprune.pruners.registry import STRATEGIES, methods

    for strategy in STRATEGIES:
        for name, decl in methods(strategy).items():
            impl = get_pruner_class(strategy, name)
            assert issubclass(impl, decl) and issubclass(impl, Pruner), (strategy, name)
            assert (impl.strategy, impl.method, impl.Options) == (strategy, name, decl.Options)
            assert impl.summary == decl.summary and impl.summary


REFMODEL = ROOT / "examples" / "refmodel"


def test_estimate_of_a_local_folder_imports_no_transformers():
    code = (
        "from llmprune.cli import app\n"
        "try:\n"
        f"    app(['uniform', {str(REFMODEL)!r}, '--estimate', '--device', 'cpu'], prog_name='llmprune')\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code"
    )
    assert imported_after(code)["transformers"] is False


@pytest.mark.parametrize(
    "strategy, method",
    [
        ("uniform", "wanda"),
        ("uniform", "minimax"),
        ("global", "tyr"),
        ("semi24", "proxsparse"),
        ("semi24", "sparsegpt"),
    ],
)
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_plain_config_gives_the_estimate_transformers_config_gives(strategy, method, device):
    from llmprune.model.config_file import read_plain_config
    from llmprune.model.loading import load_config
    from llmprune.pruners.registry import declared, option_defaults
    from llmprune.run.estimate import estimate
    from llmprune.settings import PruneSettings

    settings = PruneSettings(
        model=str(REFMODEL),
        output=Path("<estimate>"),
        strategy=strategy,
        method=method,
        method_options=option_defaults(declared(strategy, method)),
        device=device,
        gpu_memory=40.0,
    )
    plain = read_plain_config(str(REFMODEL))
    assert plain is not None
    first, second = (estimate(settings, config).to_json() for config in (plain, load_config(str(REFMODEL))))
    for est in (first, second):  # on the CPU the budget is the available host memory, which moves
        est["settings"].pop("device_budget_gib")
    assert first == second


def test_a_config_that_leaves_a_key_to_its_class_default_is_read_by_transformers(tmp_path):
    from llmprune.model.config_file import read_plain_config

    config = json.loads((REFMODEL / "config.json").read_text())
    for key, value in (("head_dim", None), ("model_type", "llmprune_hetero_llama"), ("model_type", "nemotron-nas")):
        folder = tmp_path / f"{key}-{value}"
        folder.mkdir()
        changed = {k: v for k, v in config.items() if k != key} | ({key: value} if value else {})
        (folder / "config.json").write_text(json.dumps(changed))
        assert read_plain_config(str(folder)) is None, (key, value)
    assert read_plain_config(str(tmp_path / "missing")) is None
