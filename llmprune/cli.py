"""Command-line interface: parse, validate, call the pipeline, print a summary. Nothing else.

The three pruning commands share one option list; each adds flags generated from the ``Options``
fields of its registered methods (``pruners.registry.cli_options``), so new methods never edit this file.
Building the commands imports no torch or transformers (the method table and the recovery options
are declared torch-free): ``--help``, ``--version`` and usage errors answer at once; a run imports
what it needs when it starts.
A method flag (or recipe key) the chosen method does not use is a usage error.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
import typer.core

from llmprune.errors import LlmpruneError
from llmprune.runtime.progress import console


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors the argument parser catches (a bad value, a missing argument) are one
    ``error:`` line and exit 2, like every other usage error, instead of a boxed panel."""

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except usage_error_type() as error:
            err: Any = error
            where = f" (see {err.ctx.command_path} --help)" if err.ctx is not None else ""
            console.print(
                f"[bold red]error:[/] {escape_markup(err.format_message())}{where}", highlight=False, soft_wrap=True
            )
            sys.exit(err.exit_code)
        except typer.Abort:
            console.print("Aborted.", highlight=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def usage_error_type() -> Any:
    """The argument parser's usage error: typer vendors click in recent versions, used it before."""
    try:
        from typer._click.exceptions import UsageError
    except ImportError:  # older typer: click itself
        from click.exceptions import UsageError  # type: ignore[assignment]
    return UsageError


def output_path(value: str) -> Path:
    """``-o``: an empty value (a script's unset ``$OUT``) is refused, not read as the current folder."""
    if not str(value).strip():
        raise typer.BadParameter("must not be empty (an unset variable?); name the output folder")
    return Path(value)


def escape_markup(text: str) -> str:
    from rich.markup import escape

    return escape(" ".join(text.split()))


app = typer.Typer(
    cls=OneLineErrors,
    name="llmprune",
    help="Prune Hugging Face causal LMs: uniform structured, global structured, and 2:4.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

STRATEGY_HELP = {
    "uniform": "Structured pruning with the same width in every layer (heads/KV groups and MLP channels). "
    "Output: a smaller dense model with a plain config.",
    "global": "Global structured pruning: searches a per-layer sparsity distribution under a global budget. "
    "Output: heterogeneous per-layer widths.",
    "semi24": "2:4 semi-structured pruning of every q,k,v,o,gate,up,down weight. "
    "Output: dense weights with the exact 2:4 zero pattern and a sidecar describing it.",
}


def fail(message: str, code: int) -> None:
    """Print one line to stderr and exit with ``code``."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn known failures into one line and a distinct exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from llmprune.runtime.signals import as_stop, describe, sigterm_as_interrupt

        try:
            with sigterm_as_interrupt():  # SIGTERM (schedulers) unwinds like Ctrl-C
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except LlmpruneError as err:
            fail(str(err), err.exit_code)
        except KeyboardInterrupt as err:  # the pipeline words it (checkpoint kept or not)
            fail(*describe(err))
        except Exception as err:
            if isinstance(stop := as_stop(err), KeyboardInterrupt):  # a signal a library rewrapped
                fail(*describe(stop))
            if isinstance(err, MemoryError):
                fail("out of memory; lower --nsamples/--batch-size or use a machine with more memory", 11)
            if isinstance(err, RuntimeError) and "out of memory" in str(err).lower():
                fail("out of device memory; lower --batch-size or --nsamples, or use --dtype bfloat16", 11)
            raise

    return wrapper


def _common_parameters(strategy: str) -> list[inspect.Parameter]:
    from llmprune.pruners.registry import default_method, methods
    from llmprune.settings import DEFAULT_SPARSITY, SEMI24_SPARSITY

    known = methods(strategy)
    listing = "; ".join(f"[bold]{name}[/]: {cls.summary}" for name, cls in sorted(known.items()))
    sparsity_help = (
        "Fraction of decoder-layer linear weights to remove (q,k,v,o,gate,up,down; embeddings and "
        f"lm_head are never pruned), in [0, 1). \\[default: {DEFAULT_SPARSITY}]"
        if strategy != "semi24"
        else f"2:4 always removes half of each targeted weight; only {SEMI24_SPARSITY} is accepted. "
        f"\\[default: {SEMI24_SPARSITY}]"
    )
    P = inspect.Parameter
    spec: list[tuple[str, Any, Any]] = [
        (
            "model",
            str,
            typer.Argument(
                ...,
                help="Hub id (e.g. meta-llama/Llama-3.1-8B), local model folder, or .gguf file (needs the gguf extra).",
                show_default=False,
            ),
        ),
        (
            "output",
            Optional[Path],
            typer.Option(
                None,
                "-o",
                "--output",
                help="Output folder (written atomically; must not exist unless --overwrite). Required unless --estimate.",
                show_default=False,
                parser=output_path,
            ),
        ),
        ("sparsity", Optional[float], typer.Option(None, help=sparsity_help, show_default=False)),
        (
            "method",
            Optional[str],
            typer.Option(None, help=f"Method. {listing}. \\[default: {default_method(strategy)}]", show_default=False),
        ),
        (
            "calib",
            str,
            typer.Option(
                "auto",
                help="Calibration text: a .txt (documents separated by blank lines), .jsonl (field 'text') or .parquet file, a hub dataset name (wikitext2, c4), or 'builtin' (small Python-docs text shipped with llmprune). 'auto': wikitext2 when the hub is reachable, else builtin, with a warning. Never use evaluation text.",
            ),
        ),
        ("nsamples", int, typer.Option(128, help="Number of calibration sequences.")),
        (
            "seqlen",
            Optional[int],
            typer.Option(
                None, help="Tokens per calibration sequence. \\[default: min(2048, model context)]", show_default=False
            ),
        ),
        (
            "seed",
            int,
            typer.Option(
                0, help="Random seed for calibration sampling and any stochastic step; same seed, same result."
            ),
        ),
        ("device", str, typer.Option("auto", help="Compute device: auto (cuda if available), cpu, cuda, cuda:1, ...")),
        (
            "dtype",
            str,
            typer.Option(
                "auto",
                help="Dtype the model runs in: auto (float32 on CPU, checkpoint dtype on GPU), float32, bfloat16, float16. Statistics are always float32.",
            ),
        ),
        (
            "save_dtype",
            str,
            typer.Option(
                "auto", help="Dtype of the exported weights: auto (the checkpoint's), float32, bfloat16, float16."
            ),
        ),
        (
            "attn_unit",
            str,
            typer.Option(
                "group",
                help="Attention pruning unit: 'group' removes whole KV groups (KV head + its query heads); 'query' removes query heads, the same number from every group.",
            ),
        ),
        (
            "align",
            int,
            typer.Option(
                1,
                help="Keep every width (query and KV heads × head_dim, MLP channels) a multiple of N, e.g. 32 or 256 for GGUF quantization blocks, 64/128 for GPU kernels; the budget is met as closely as that grid allows (the report gives the achieved sparsity). A module pruned entirely or kept whole is always allowed.",
            ),
        ),
        (
            "align_heads",
            int,
            typer.Option(
                1,
                help="Keep every query-head and KV-head count divisible by T (the tensor-parallel size you will serve with, e.g. vLLM --tensor-parallel-size).",
            ),
        ),
        ("batch_size", int, typer.Option(8, help="Sequences per forward pass during calibration.")),
        (
            "offload_dir",
            Optional[Path],
            typer.Option(
                None,
                help="Keep calibration activations between layers on disk in this folder instead of in memory (layer-wise methods; for very large models or many samples).",
                show_default=False,
            ),
        ),
        (
            "export_format",
            str,
            typer.Option(
                "hf",
                help="Output format: 'hf' (plain config for uniform widths; per-layer widths with a modeling file for global) or 'deci' (DeciLM / Nemotron-NAS block_configs, which vLLM and llama.cpp serve; widths the format cannot express are zero-padded, the report says what that costs). See docs/export.md.",
            ),
        ),
        ("max_shard_size", str, typer.Option("5GB", help="Largest safetensors shard in the output.")),
        (
            "grad_checkpoint",
            str,
            typer.Option(
                "auto",
                help="Learned methods: recompute each decoder layer's activations in backward instead of keeping them (same gradients, ~1/3 more compute). auto: on only when the weights plus a step's activations would exceed half the device's memory; on; off.",
            ),
        ),
        (
            "stream_weights",
            str,
            typer.Option(
                "auto",
                help="Learned methods and Týr's search: keep the decoder layers in host memory and copy each to the GPU only while it runs (fits 70B on 80 GB devices; costs host-to-device traffic). auto: on when the run would not fit the GPU otherwise; on; off.",
            ),
        ),
        (
            "config",
            Optional[Path],
            typer.Option(
                None,
                "--config",
                help="YAML or JSON recipe with the same keys as these options (e.g. sparsity: 0.3, lora_rank: 8); flags given on the command line override it.",
                show_default=False,
            ),
        ),
        (
            "overwrite",
            bool,
            typer.Option(
                False, "--overwrite", help="Replace an existing output folder (only after the new one is complete)."
            ),
        ),
        (
            "estimate",
            bool,
            typer.Option(
                False,
                "--estimate",
                help="Print the predicted peak device memory, peak host memory, disk and time of this run for --device/--dtype (reads only the model's config.json; loads no weights) and exit.",
            ),
        ),
        (
            "json_path",
            Optional[Path],
            typer.Option(
                None, "--json", help="With --estimate: also write it as JSON to this file.", show_default=False
            ),
        ),
        (
            "gpu_memory",
            Optional[float],
            typer.Option(
                None,
                help="GiB of device memory to plan for (the pre-flight check and --layers-per-stage auto), instead of querying the GPU's free memory.",
                show_default=False,
            ),
        ),
        (
            "force",
            bool,
            typer.Option(
                False, "--force", help="Run even when the pre-flight estimate says it will not fit the GPU or the disk."
            ),
        ),
        (
            "resume",
            bool,
            typer.Option(
                False,
                "--resume",
                help="Continue an interrupted run of the same command from its last checkpoint (methods that train or search).",
            ),
        ),
    ]
    spec.append(
        (
            "recover",
            bool,
            typer.Option(
                False,
                "--recover",
                help="Right after pruning, distil the pruned model from the input model (the recovery stage of "
                "`llmprune recover`, options --recover-*; docs/recovery.md).",
            ),
        )
    )
    if strategy == "semi24":
        spec = [s for s in spec if s[0] not in ("attn_unit", "align", "align_heads", "export_format")]
    return [P(name, P.KEYWORD_ONLY, default=default, annotation=ann) for name, ann, default in spec]


#: Recovery options that ``llmprune recover`` takes from one of its own flags (not repeated).
RECOVER_OWN_FLAGS = {"recover_nsamples": "nsamples"}


def _recovery_parameters(prefix: str) -> list[inspect.Parameter]:
    """One keyword parameter per field of ``RecoveryOptions``, named ``prefix + field`` (fields that
    already start with ``recover_`` keep their name)."""
    from llmprune.pruners.registry import flag_type
    from llmprune.train.recovery_options import RecoveryOptions

    params = []
    for name, f in RecoveryOptions.model_fields.items():
        if not prefix and name in RECOVER_OWN_FLAGS:
            continue
        pname = name if name.startswith("recover_") else prefix + name
        kind = flag_type(f.annotation, f"recovery option {name!r}")
        default = f.get_default(call_default_factory=True)
        flag = "--" + pname.replace("_", "-")
        option = typer.Option(default, flag, help=str(f.description), show_default=default is not None)
        params.append(
            inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[kind])
        )
    return params


def _recovery_options(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``RecoveryOptions`` fields from command parameters named by :func:`_recovery_parameters`,
    validated (a bad value is a usage error naming its flag)."""
    from pydantic import ValidationError

    from llmprune.errors import UsageError
    from llmprune.train.recovery_options import RecoveryOptions

    def flag(name: str) -> str:
        return "--" + (name if name.startswith("recover_") else prefix + name).replace("_", "-")

    out = {}
    for name in RecoveryOptions.model_fields:
        own = RECOVER_OWN_FLAGS.get(name) if not prefix else None
        value = values.get(own or flag(name)[2:].replace("-", "_"))
        if value is not None:
            out[name] = value
    try:
        RecoveryOptions.model_validate(out)
    except ValidationError as err:
        first = err.errors()[0]
        msg = str(first.get("msg", "")).removeprefix("Value error, ")
        raise UsageError(f"invalid {flag(str(first['loc'][0]))}: {msg}") from err
    return out


def _method_parameters(strategy: str) -> list[inspect.Parameter]:
    """One keyword parameter per method option of ``strategy`` (generated from the pruners' Options)."""
    from llmprune.pruners.registry import cli_options

    params = []
    for opt in cli_options(strategy):
        decls = [f"{opt.flag}/--no-{opt.flag[2:]}"] if opt.type is bool else [opt.flag]
        help_text = opt.help
        if not opt.shared_default:  # each method applies its own default when the flag is not given
            listing = ", ".join(f"{m} {_shown(v, opt)}" for m, v in opt.defaults.items())
            help_text += f" \\[default: {listing}]"
        params.append(
            inspect.Parameter(
                opt.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(
                    opt.default, *decls, help=help_text, show_default=opt.shared_default and opt.default is not None
                ),
                annotation=Optional[opt.type],
            )
        )
    return params


def _shown(value: Any, opt: Any) -> str:
    """A default as --help shows it (bool flags by their flag name, like Typer)."""
    if opt.type is bool:
        return opt.flag[2:] if value else f"no-{opt.flag[2:]}"
    return str(value)


def _method_options(strategy: str, method: str, given: dict[str, Any], origin: dict[str, str]) -> dict[str, Any]:
    """The chosen method's options: its defaults, overridden by the given flags and recipe keys.

    A given option the method does not declare is a usage error naming the methods that do.
    """
    from llmprune.errors import UsageError
    from llmprune.pruners.registry import cli_options, declared, option_defaults

    defaults = option_defaults(declared(strategy, method))
    declared_by = {opt.name: opt.methods for opt in cli_options(strategy)}
    for name in given:
        if name not in defaults:
            users = ", ".join(declared_by[name])
            raise UsageError(f"{origin[name]} is an option of {users}, not of {strategy} --method {method}")
    return {**defaults, **given}


def _given(ctx: typer.Context, name: str) -> bool:
    """True when the user typed ``name`` (a default value never counts)."""
    source = ctx.get_parameter_source(name)  # an enum of the click that typer runs on (it may vendor its own)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _prune_command(strategy: str) -> Callable[..., None]:
    common = _common_parameters(strategy)
    extra = _method_parameters(strategy)
    recovery = _recovery_parameters("recover_")
    common_names = {p.name for p in common}
    recovery_names = {p.name for p in recovery}
    annotations = {p.name: p.annotation for p in (*common, *extra, *recovery)}

    @friendly_errors
    def command(ctx: typer.Context, **kwargs: Any) -> None:
        from llmprune.errors import UsageError
        from llmprune.pruners.registry import default_method
        from llmprune.settings import PruneSettings, check_recipe_types, load_recipe, validated

        recipe_path = kwargs.pop("config")
        planning = {k: kwargs.pop(k) for k in ("estimate", "json_path", "gpu_memory", "force")}
        gpu_memory = planning["gpu_memory"]
        if gpu_memory is not None and not (0 < gpu_memory < float("inf")):
            raise UsageError(f"--gpu-memory must be a positive number of GiB, got {gpu_memory}")
        if kwargs["output"] is None:
            if not planning["estimate"]:
                raise UsageError("missing option -o/--output (the output folder)")
            kwargs["output"] = Path("<estimate>")
        # Where each value came from: a flag typed by the user, a recipe key, or a default.
        origin = {k: f"--{k.replace('_', '-')}" for k in kwargs if _given(ctx, k)}
        if recipe_path is not None:
            recipe = load_recipe(recipe_path, allowed=set(kwargs) - {"model", "output"})
            check_recipe_types(recipe, annotations, recipe_path)
            for key, value in recipe.items():
                if key not in origin:
                    kwargs[key] = value
                    origin[key] = f"--config {recipe_path}: {key}"
        values = {k: v for k, v in kwargs.items() if k in common_names}
        values["method"] = values["method"] or default_method(strategy)
        recover_given = [origin[k] for k in recovery_names if k in origin]
        if recover_given and not values["recover"]:
            raise UsageError(f"{recover_given[0]} is an option of the recovery stage: add --recover")
        values["recover"] = _recovery_options(kwargs, "recover_") if values["recover"] else None
        given = {k: v for k, v in kwargs.items() if k not in common_names | recovery_names and k in origin}
        method_options = _method_options(strategy, values["method"], given, origin)
        settings = validated(
            PruneSettings, strategy=strategy, method_options=method_options, gpu_memory=gpu_memory, **values
        )
        if planning["estimate"] or planning["json_path"] is not None:
            estimate_only(settings, planning["json_path"])
            return
        from llmprune.model.loading import resolve_device
        from llmprune.run.estimate import preflight
        from llmprune.run.pipeline import run_prune
        from llmprune.run.summary import print_prune_summary

        resolve_device(settings.device)  # a device this machine lacks: one line, before any work
        preflight(settings, planning["gpu_memory"], planning["force"])
        report = run_prune(settings)
        from llmprune.runtime.distributed import env_rank

        if env_rank() == 0:  # under torchrun, rank 0 speaks for the run
            print_prune_summary(report)

    context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    command.__signature__ = inspect.Signature([context, *common, *extra, *recovery])  # type: ignore[attr-defined]
    command.__doc__ = STRATEGY_HELP[strategy]
    command.__name__ = f"{strategy}_command"
    return command


def estimate_only(settings: Any, json_path: Path | None) -> None:
    """``--estimate``: print (and with ``--json`` write) the pre-flight estimate; no weights read."""
    import json

    from llmprune.run.estimate import from_settings, print_estimate
    from llmprune.runtime.atomic import check_file_writable, write_text

    if json_path is not None:  # an unwritable path is one line, before the config is read
        check_file_writable(json_path, "--json")
    est = from_settings(settings)
    print_estimate(est)
    if json_path is not None:
        write_text(json_path, json.dumps(est.to_json(), indent=2) + "\n")


def _version(value: bool) -> None:
    if value:
        import llmprune

        typer.echo(f"llmprune {llmprune.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_version, is_eager=True
    ),
) -> None:
    """Prune Hugging Face causal LMs: uniform structured, global structured, and 2:4."""


for _strategy in ("uniform", "global", "semi24"):
    app.command(name=_strategy, help=STRATEGY_HELP[_strategy])(_prune_command(_strategy))


RECOVER_HELP = (
    "Recover a pruned model by distillation from its dense teacher on calibration text: LoRA (merged) or full "
    "fine-tuning of the kept weights; widths, heterogeneous configs and 2:4 zeros stay as they are. See docs/recovery.md."
)


def _recover_command() -> Callable[..., None]:
    from llmprune.train.recovery_options import DEFAULT_RECOVER_NSAMPLES

    P = inspect.Parameter
    common = {p.name: p for p in _common_parameters("uniform")}
    output = typer.Option(
        ...,
        "-o",
        "--output",
        help="Output folder (written atomically; must not exist unless --overwrite).",
        show_default=False,
        parser=output_path,
    )
    spec = [
        P(
            "model",
            P.KEYWORD_ONLY,
            default=typer.Argument(..., help="The pruned model folder (an llmprune output).", show_default=False),
            annotation=str,
        ),
        common["output"].replace(default=output, annotation=Path),
        P(
            "teacher",
            P.KEYWORD_ONLY,
            default=typer.Option(
                ..., "--teacher", help="The dense model it was pruned from (hub id or folder).", show_default=False
            ),
            annotation=str,
        ),
        common["calib"],
        P(
            "nsamples",
            P.KEYWORD_ONLY,
            default=typer.Option(
                DEFAULT_RECOVER_NSAMPLES,
                help="Calibration sequences the recovery distils on (all the text holds if it holds fewer).",
            ),
            annotation=int,
        ),
        *(
            common[n]
            for n in (
                "seqlen",
                "seed",
                "device",
                "dtype",
                "save_dtype",
                "batch_size",
                "max_shard_size",
                "stream_weights",
                "overwrite",
                "resume",
            )
        ),
    ]
    recovery = _recovery_parameters("")

    @friendly_errors
    def command(**kwargs: Any) -> None:
        from llmprune.run.recover import RecoverSettings, run_recover
        from llmprune.settings import validated

        options = _recovery_options(kwargs, "")
        values = {p.name: kwargs[p.name] for p in spec}
        settings = validated(RecoverSettings, options=options, **values)
        from llmprune.model.loading import resolve_device

        resolve_device(settings.device)  # a device this machine lacks: one line, before any work
        report = run_recover(settings)
        from llmprune.runtime.distributed import env_rank

        if env_rank() == 0 and report.recovery is not None:
            from llmprune.run.summary import recovery_line

            console.print(f"recovered {settings.output}: {recovery_line(report.recovery)}", highlight=False)

    command.__signature__ = inspect.Signature([*spec, *recovery])  # type: ignore[attr-defined]
    command.__doc__ = RECOVER_HELP
    command.__name__ = "recover_command"
    return command


app.command(name="recover", help=RECOVER_HELP)(_recover_command())


@app.command(name="eval")
@friendly_errors
def eval_command(
    model: str = typer.Argument(
        ..., help="Hub id, local model folder, .gguf file, or an llmprune output folder.", show_default=False
    ),
    data: Optional[str] = typer.Option(
        None,
        help="Perplexity text: a .txt/.jsonl/.parquet file or a hub dataset name (wikitext2 test split, c4 validation). \\[default: wikitext2; with --tasks, perplexity only when --data is given]",
        show_default=False,
    ),
    seqlen: Optional[int] = typer.Option(
        None,
        help="Window length in tokens (non-overlapping windows, remainder dropped). \\[default: min(2048, model context)]",
        show_default=False,
    ),
    batch_size: int = typer.Option(8, help="Windows per forward pass."),
    speed: bool = typer.Option(
        False, "--speed", help="Also measure prefill and decode tokens/s (warm-up and repeated runs, median)."
    ),
    speed_repeats: int = typer.Option(5, help="Timed repeats for --speed."),
    baseline: Optional[str] = typer.Option(
        None,
        help="With --speed: also time this model (e.g. the dense original) in the same process and report the speed-up.",
        show_default=False,
    ),
    device: str = typer.Option("auto", help="Compute device: auto, cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option(
        "auto", help="auto (float32 on CPU, checkpoint dtype on GPU), float32, bfloat16, float16."
    ),
    json_path: Optional[Path] = typer.Option(
        None, "--json", help="Write the report as JSON to this file.", show_default=False
    ),
    tasks: Optional[str] = typer.Option(
        None,
        help="Also measure task accuracy with lm-evaluation-harness (pip install 'llmprune\\[tasks]'): comma-separated harness task names (arc_easy,hellaswag; `lm-eval ls tasks` lists them) and/or paths of local task YAML files or folders.",
        show_default=False,
    ),
    num_fewshot: int = typer.Option(0, help="With --tasks: few-shot examples per prompt."),
    task_limit: Optional[int] = typer.Option(
        None,
        help="With --tasks: evaluate only the first N examples of each task (quick checks; not comparable to full runs).",
        show_default=False,
    ),
    task_batch_size: int = typer.Option(8, help="With --tasks: requests per forward pass."),
) -> None:
    """Perplexity (docs/methods.md §0), parameter counts, optional throughput and task accuracy, as a table and JSON."""
    from llmprune.run.evaluation import EvalSettings, run_eval
    from llmprune.run.summary import print_eval_summary
    from llmprune.settings import validated

    settings = validated(
        EvalSettings,
        model=model,
        data=data,
        seqlen=seqlen,
        batch_size=batch_size,
        speed=speed,
        speed_repeats=speed_repeats,
        device=device,
        dtype=dtype,
        json_path=json_path,
        baseline=baseline,
        tasks=tasks,
        num_fewshot=num_fewshot,
        task_limit=task_limit,
        task_batch_size=task_batch_size,
    )
    report = run_eval(settings)
    print_eval_summary(report)


@app.command(name="inspect")
@friendly_errors
def inspect_command(
    folder: str = typer.Argument(
        ..., help="A model folder (llmprune output or any HF model folder) or a .gguf file.", show_default=False
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the description as JSON instead of tables."),
) -> None:
    """Describe a model folder or GGUF file: how it was pruned, per-layer widths or 2:4 coverage, parameter counts,
    and whether it loads without custom code. Reads headers only, never the weights."""
    import json

    from llmprune.run.inspection import inspect_folder
    from llmprune.run.summary import print_inspect

    info = inspect_folder(folder)
    if json_output:
        typer.echo(json.dumps(info, indent=2))
    else:
        print_inspect(info)


@app.command(name="remask")
@friendly_errors
def remask_command(
    model: str = typer.Argument(
        ..., help="Model folder to fix, e.g. a 2:4 output after a LoRA merge.", show_default=False
    ),
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        help="Output folder (written atomically; must not exist unless --overwrite).",
        show_default=False,
        parser=output_path,
    ),
    like: Path = typer.Option(
        ...,
        "--like",
        help="The 2:4 output whose zero pattern to restore (has llmprune_sparsity.json).",
        show_default=False,
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    save_dtype: str = typer.Option(
        "auto", help="Dtype of the exported weights: auto (MODEL's), float32, bfloat16, float16."
    ),
) -> None:
    """Re-apply a 2:4 output's zero pattern after fine-tuning (a merged LoRA makes every weight dense)."""
    from llmprune.run.remask import remask

    report = remask(model, like, output, overwrite, save_dtype)
    console.print(f"restored 2:4 in {output} ({report['zeros_restored']} weights zeroed again)", highlight=False)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="llmprune")


if __name__ == "__main__":  # pragma: no cover
    main()
