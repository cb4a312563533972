"""torch.distributed (gloo, CPU, 2 processes): the distributed result equals the single-process one.

One spawn of two ranks runs every scenario (process start-up dominates on small CPUs); the parent
runs the same scenarios without a process group and compares: Hessian statistics within float
tolerance, the same plans for the one-shot methods, the same Týr selections with the same seed,
and close results for DDP mask learning (minimax, ProxSparse). A ``torchrun`` test runs the CLI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_model, read_json

from llmprune.data.capture import LayerwiseRunner
from llmprune.model.arch import ArchAdapter
from llmprune.pruners.base import PruneContext, PruneResult, get_pruner_class
from llmprune.runtime import distributed
from llmprune.runtime.progress import Reporter
from llmprune.settings import PruneSettings

pytestmark = pytest.mark.distributed

WORLD = 2
NSAMPLES, SEQLEN = 8, 32
TYR_SMALL = dict(generations=2, offspring=4, select_tokens="32,64,128", survivors="2,1", iterations=2, topk_logits=50)
MINIMAX = dict(steps=6, lora_rank=4, teacher_topk=16, lora_lr=1e-2, checkpoint_every=100)
PROX = dict(steps=4, checkpoint_every=100)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _calib() -> torch.Tensor:
    return torch.randint(0, 300, (NSAMPLES, SEQLEN), generator=torch.Generator().manual_seed(0))


def _ctx(
    work: Path, strategy: str, method: str, sparsity: float = 0.4, batch_size: int = 4, layers: int = 2, **options
) -> PruneContext:
    work.mkdir(parents=True, exist_ok=True)
    if strategy == "semi24":
        sparsity = 0.5  # 2:4 always removes half; PruneSettings refuses any other value
    model = make_tiny_model("llama", num_hidden_layers=layers)
    settings = PruneSettings(
        strategy=strategy,
        method=method,
        model="tiny",
        output=work / "out",
        sparsity=sparsity,
        calib="builtin",
        nsamples=NSAMPLES,
        seqlen=SEQLEN,
        seed=0,
        batch_size=batch_size,
        method_options=options,
    )
    return PruneContext(
        model=model,
        adapter=ArchAdapter.for_model(model),
        tokenizer=None,
        calib=_calib(),
        settings=settings,
        device=torch.device("cpu"),
        work_dir=work,
        progress=Reporter(enabled=False),
    )


def _prune(work: Path, strategy: str, method: str, **options):
    ctx = _ctx(work, strategy, method, **options)
    result = PruneResult.of(get_pruner_class(strategy, method)(options).prune(ctx))
    return ctx, result


# ----- the scenarios (run with and without a process group) ---------------------------------------
def scenario_stats(work: Path) -> dict:
    """Float32 input statistics of every layer (the runner shards the samples and all-reduces)."""
    ctx = _ctx(work, "semi24", "sparsegpt")
    runner = LayerwiseRunner(ctx.model, ctx.adapter, ctx.calib, ctx.device, batch_size=3)
    out = {}

    def process(i, layer):
        for key, st in runner.collect(i, layer, ("q", "o", "gate", "down"), hessian=True).items():
            out[f"{i}.{key}"] = {"sq_norm": st.sq_norm.clone(), "hessian": st.hessian.clone(), "tokens": st.tokens}

    runner.run(process)
    return out


def scenario_one_shot(work: Path) -> dict:
    out = {}
    _, result = _prune(work / "uw", "uniform", "wanda")
    out["uniform_wanda"] = [lp.model_dump() for lp in result.plan.layers]
    for method in ("wanda", "sparsegpt"):
        ctx, _ = _prune(work / f"s{method}", "semi24", method)
        out[f"semi24_{method}"] = {
            name: w.detach().clone() for name, w in ctx.model.state_dict().items() if name.endswith("proj.weight")
        }
    return out


def scenario_tyr(work: Path) -> dict:
    _, result = _prune(work / "tyr", "global", "tyr", **TYR_SMALL)
    plan, log = result.plan, result.files["tyr_search_log.json"]
    return {
        "layers": [lp.model_dump() for lp in plan.layers],
        "fitness": [r["best_fitness"] for r in log["generations"]],
        "improved": [r["improved"] for r in log["generations"]],
        "weights": {k: v.clone() for k, v in plan.weights.items()},
        # the supernet layer files this rank wrote into its own work folder
        "supernet_files": sorted(p.name for p in (work / "tyr").rglob("layer*.safetensors")),
    }


def scenario_train(work: Path) -> dict:
    out = {}
    _, result = _prune(work / "mm", "uniform", "minimax", **MINIMAX)
    plan, trace = result.plan, result.files["minimax_trace.json"]["trace"]
    out["minimax"] = {
        "layers": [lp.model_dump() for lp in plan.layers],
        "loss": [r["loss"] for r in trace],
        "s_attn": [r["s_attn"] for r in trace],
        "weights": {k: v.clone() for k, v in plan.weights.items()},
    }
    _, result = _prune(work / "px", "semi24", "proxsparse", **PROX)
    plan, trace = result.plan, result.files["proxsparse_trace.json"]["trace"]
    out["proxsparse"] = {"masks": {k: v.clone() for k, v in plan.masks.items()}, "loss": [r["loss"] for r in trace]}
    return out


SCENARIOS = {"stats": scenario_stats, "one_shot": scenario_one_shot, "tyr": scenario_tyr, "train": scenario_train}


def _worker(rank: int, port: int, root: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        GLOO_SOCKET_IFNAME="lo",
        LLMPRUNE_DIST_TIMEOUT="300",
    )
    torch.set_num_threads(1)
    assert distributed.init("cpu") and distributed.backend() == "gloo"
    try:
        results = {name: fn(Path(root) / f"rank{rank}" / name) for name, fn in SCENARIOS.items()}
        torch.save(results, Path(root) / f"results{rank}.pt")
    finally:
        distributed.cleanup()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """{"dist": [rank 0 results, rank 1 results], "single": results without a process group}."""
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("dist")
    mp.start_processes(_worker, args=(free_port(), str(root)), nprocs=WORLD, start_method="spawn", join=True)
    assert not distributed.is_enabled()
    single = {name: fn(root / "single" / name) for name, fn in SCENARIOS.items()}
    return {"dist": [torch.load(root / f"results{r}.pt", weights_only=False) for r in range(WORLD)], "single": single}


def _decide_worker(rank: int, port: int, root: str) -> None:
    """Rank 0's yes/no, and a time-based checkpoint whose clocks disagree between the ranks."""
    from llmprune.train.cadence import Cadence, Every

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    os.environ.update(GLOO_SOCKET_IFNAME="lo", LLMPRUNE_DIST_TIMEOUT="120")
    assert distributed.init("cpu")
    try:
        flags = [distributed.main_decides(rank == 0), distributed.main_decides(rank == 1)]
        clock = iter([0.0, 0.0 if rank == 0 else 1000.0, 0.0, 1000.0 if rank == 0 else 0.0])
        timer = Cadence(Every(seconds=60.0), clock=lambda: next(clock))  # start, then one reading a step
        due = [timer.due(1)]
        timer.restart()
        due.append(timer.due(2))
        torch.save({"flags": flags, "due": due}, Path(root) / f"decide{rank}.pt")
    finally:
        distributed.cleanup()


def test_rank0_decides_for_every_rank(tmp_path):
    """``main_decides`` hands rank 0's answer to every rank, so a checkpoint due by rank 0's clock
    (and only by it) is written at the same step on both ranks; without a group, the flag itself."""
    import torch.multiprocessing as mp

    mp.start_processes(_decide_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    for r in range(WORLD):
        got = torch.load(tmp_path / f"decide{r}.pt")
        assert got == {"flags": [True, False], "due": [False, True]}, (r, got)
    assert distributed.main_decides(True) is True and distributed.main_decides(False) is False


# ----- tests --------------------------------------------------------------------------------------
def test_without_torchrun_there_is_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init("cpu") is False
    assert not distributed.is_enabled() and distributed.world_size() == 1 and distributed.is_main()
    rows = torch.arange(10).view(5, 2)
    assert distributed.shard_rows(rows) is rows and distributed.shard_range(5) == (0, 5)
    assert distributed.on_main(lambda: 7) == 7 and distributed.broadcast_seed(3) == 3
    forward = lambda t: t  # noqa: E731
    assert distributed.data_parallel([], forward) is forward


def test_hessian_statistics_equal_single_process(runs):
    single, dist = runs["single"]["stats"], runs["dist"][0]["stats"]
    assert set(single) == set(dist) and len(single) == 2 * 4
    for key, ref in single.items():
        got = dist[key]
        assert got["tokens"] == ref["tokens"] == NSAMPLES * SEQLEN, key
        torch.testing.assert_close(got["sq_norm"], ref["sq_norm"], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got["hessian"], ref["hessian"], rtol=1e-5, atol=1e-4)
    for key in single:  # both ranks hold the totals
        torch.testing.assert_close(runs["dist"][1]["stats"][key]["hessian"], dist[key]["hessian"], rtol=0, atol=0)


def test_one_shot_plans_equal_single_process(runs):
    single, dist = runs["single"]["one_shot"], runs["dist"][0]["one_shot"]
    assert dist["uniform_wanda"] == single["uniform_wanda"]
    assert runs["dist"][1]["one_shot"]["uniform_wanda"] == single["uniform_wanda"]
    for method in ("semi24_wanda", "semi24_sparsegpt"):
        for name, ref in single[method].items():
            got = dist[method][name]
            assert torch.equal(got != 0, ref != 0), f"{method}: 2:4 mask of {name} differs"
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_tyr_search_selects_the_same_candidates(runs):
    single, dist = runs["single"]["tyr"], runs["dist"][0]["tyr"]
    assert dist["layers"] == single["layers"], "the search ended on another distribution"
    assert dist["improved"] == single["improved"]
    assert any(single["improved"]), "the small search should move at least once"
    assert dist["fitness"] == pytest.approx(single["fitness"], rel=1e-4)
    assert runs["dist"][1]["tyr"]["layers"] == dist["layers"]
    assert runs["dist"][1]["tyr"]["fitness"] == dist["fitness"], "ranks must see identical fitness values"
    for name, w in single["weights"].items():
        torch.testing.assert_close(dist["weights"][name], w, rtol=1e-3, atol=1e-4)


def test_tyr_ranks_of_one_node_share_one_supernet(runs):
    # Local rank 0 writes the supernet (the last iteration's is left: 2 layers); rank 1 reads it.
    assert runs["dist"][0]["tyr"]["supernet_files"] == ["layer000.safetensors", "layer001.safetensors"]
    assert runs["dist"][1]["tyr"]["supernet_files"] == [], "rank 1 wrote its own copy"
    assert runs["single"]["tyr"]["supernet_files"] == runs["dist"][0]["tyr"]["supernet_files"]


def test_ddp_mask_learning_matches_single_process(runs):
    single, dist, other = runs["single"]["train"], runs["dist"][0]["train"], runs["dist"][1]["train"]
    mm, mm_d = single["minimax"], dist["minimax"]
    assert mm_d["loss"] == pytest.approx(mm["loss"], rel=1e-3)
    assert mm_d["s_attn"] == pytest.approx(mm["s_attn"], rel=1e-4)
    assert mm_d["layers"] == mm["layers"]
    for name, w in mm["weights"].items():
        torch.testing.assert_close(mm_d["weights"][name], w, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(other["minimax"]["weights"][name], mm_d["weights"][name], rtol=0, atol=0)
    px, px_d = single["proxsparse"], dist["proxsparse"]
    assert px_d["loss"] == pytest.approx(px["loss"], rel=1e-3)
    same = sum(int((px_d["masks"][n] == m).sum()) for n, m in px["masks"].items())
    total = sum(m.numel() for m in px["masks"].values())
    assert same / total > 0.999, "ProxSparse masks should agree up to float ties"
    for n, m in px_d["masks"].items():
        assert torch.equal(other["proxsparse"]["masks"][n], m), "ranks must learn identical masks"


# ----- the CLI under torchrun -----------------------------------------------------------------------
def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        GLOO_SOCKET_IFNAME="lo",
        LLMPRUNE_DIST_TIMEOUT="300",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(WORLD),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "llmprune",
        *args,
    ]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def _cli_single(args: list[str]) -> None:
    from typer.testing import CliRunner

    from llmprune.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output


def _common(model: Path, text: Path) -> list[str]:
    return [
        str(model),
        "--calib",
        str(text),
        "--nsamples",
        "4",
        "--seqlen",
        "32",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]


def test_torchrun_cli_uniform_wanda_equals_single_process(tmp_path, tiny_model_dir, tiny_text):
    out = tmp_path / "dist-out"
    proc = _torchrun(
        ["uniform", *_common(tiny_model_dir, tiny_text), "-o", str(out), "--method", "wanda", "--sparsity", "0.4"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    single = tmp_path / "single-out"
    _cli_single(
        ["uniform", *_common(tiny_model_dir, tiny_text), "-o", str(single), "--method", "wanda", "--sparsity", "0.4"]
    )
    assert read_json(out / "llmprune_plan.json")["layers"] == read_json(single / "llmprune_plan.json")["layers"]
    report = read_json(out / "llmprune_report.json")
    assert report["distributed"] == {"world_size": WORLD, "backend": "gloo"}
    assert "distributed" not in read_json(single / "llmprune_report.json")
    # Only rank 0 wrote: one output, no staging, checkpoint or rank scratch folders left behind.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert (proc.stdout + proc.stderr).count("llmprune uniform --method wanda") == 1, "rank 0 alone prints the summary"


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy,method,extra",
    [
        (
            "global",
            "tyr",
            [
                "--generations",
                "2",
                "--offspring",
                "4",
                "--select-tokens",
                "32,64,128",
                "--survivors",
                "2,1",
                "--iterations",
                "2",
                "--topk-logits",
                "50",
                "--sparsity",
                "0.4",
            ],
        ),
        ("semi24", "proxsparse", ["--steps", "4"]),
        ("uniform", "minimax", ["--steps", "6", "--lora-rank", "4", "--teacher-topk", "16", "--sparsity", "0.4"]),
    ],
)
def test_torchrun_cli_learned_methods(tmp_path, tiny_model_dir, tiny_text, strategy, method, extra):
    out = tmp_path / "dist-out"
    proc = _torchrun(
        [strategy, *_common(tiny_model_dir, tiny_text), "-o", str(out), "--method", method, *extra], tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    single = tmp_path / "single-out"
    _cli_single([strategy, *_common(tiny_model_dir, tiny_text), "-o", str(single), "--method", method, *extra])
    plan_d, plan_s = read_json(out / "llmprune_plan.json"), read_json(single / "llmprune_plan.json")
    if strategy != "semi24":
        assert plan_d["layers"] == plan_s["layers"]
    assert json.loads((out / "llmprune_report.json").read_text())["distributed"]["world_size"] == WORLD
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_torchrun_error_on_rank0_reaches_every_rank(tmp_path, tiny_model_dir, tiny_text):
    out = tmp_path / "exists"
    out.mkdir()
    proc = _torchrun(["uniform", *_common(tiny_model_dir, tiny_text), "-o", str(out), "--method", "wanda"], tmp_path)
    assert proc.returncode != 0
    # Both ranks report rank 0's one-line error and exit with its code (nobody waits for a timeout).
    assert (proc.stdout + proc.stderr).count("exists; pass --overwrite") == WORLD, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_torchrun_recover_equals_single_process(tmp_path, tiny_model_dir, tiny_text, mode):
    """`recover` under torchrun: each rank distils on its shard of the calibration rows and the
    gradients are averaged, so the recovered 2:4 model matches the single-process one (float
    tolerance), its zeros are still exactly zero, and only rank 0 wrote."""
    from safetensors.torch import load_file

    common = _common(tiny_model_dir, tiny_text)
    pruned = tmp_path / "pruned"
    _cli_single(["semi24", *common, "-o", str(pruned), "--method", "wanda"])
    recover = [
        "recover",
        str(pruned),
        *common[1:],
        "--teacher",
        str(tiny_model_dir),
        "--recover-mode",
        mode,
        "--steps",
        "4",
        "--lora-rank",
        "4",
        "--teacher-topk",
        "16",
        "--lr",
        "1e-2",
    ]
    work = tmp_path / "dist"
    work.mkdir()
    proc = _torchrun([*recover, "-o", str(work / "out")], work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    single = tmp_path / "single-out"
    _cli_single([*recover, "-o", str(single)])
    report_d = read_json(work / "out" / "llmprune_report.json")
    report_s = read_json(single / "llmprune_report.json")
    assert report_d["recovery"]["distributed"] == {"world_size": WORLD, "backend": "gloo"}
    assert "distributed" not in report_s["recovery"]
    assert report_d["recovery"]["loss_curve"] == pytest.approx(report_s["recovery"]["loss_curve"], rel=1e-3)
    before, dist, one = (load_file(p / "model.safetensors") for p in (pruned, work / "out", single))
    trained = 0
    for name, w in one.items():
        torch.testing.assert_close(dist[name], w, rtol=1e-3, atol=1e-4)
        trained += int(not torch.equal(w, before[name]))
    assert trained > 0
    for name in read_json(pruned / "llmprune_sparsity.json")["targets"]:
        w0 = before[f"{name}.weight"]
        assert torch.equal(dist[f"{name}.weight"][w0 == 0], torch.zeros_like(w0[w0 == 0])), name
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []
