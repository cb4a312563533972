"""Calibration and evaluation text: one loader for local files and hub datasets.

Text is tokenized as one stream. Calibration draws ``nsamples`` distinct non-overlapping windows
of ``seqlen`` tokens, reproducibly from ``seed``; evaluation cuts the stream into consecutive
windows and drops the remainder (methods.md §0).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llmprune.errors import DataError

#: Hub datasets by short name: (dataset, config, text field, split for calibration, split for eval).
HUB_DATASETS: dict[str, tuple[str, str | None, str, str, str]] = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "text", "train", "test"),
    "c4": ("allenai/c4", "en", "text", "train", "validation"),
}
_C4_FILES = {
    "train": "en/c4-train.00000-of-01024.json.gz",
    "validation": "en/c4-validation.00000-of-00008.json.gz",
}


BUILTIN = "builtin"
BUILTIN_PATH = Path(__file__).parents[1] / "resources" / "builtin_calib.txt"
#: ``--calib auto``: the standard hub dataset when reachable, else the built-in text.
AUTO = "auto"


def resolve_calibration_source(source: str) -> tuple[str, str | None]:
    """Turn ``auto`` into a concrete source; returns (source, warning or None)."""
    if source != AUTO:
        return source, None
    try:
        read_text("wikitext2", "calibration")
        return "wikitext2", None
    except DataError as err:
        return BUILTIN, (
            f"{err}; calibrating on the small built-in text (Python docstrings) instead. "
            "Domain-matched text (--calib FILE) gives better results."
        )


def read_text(source: str, split: str = "calibration") -> str:
    """Return the whole text of a source: a .txt/.jsonl/.parquet file or a hub dataset name.

    ``split`` is ``calibration`` or ``evaluation`` and only matters for hub datasets.
    """
    if source == BUILTIN:
        return BUILTIN_PATH.read_text()
    path = Path(source).expanduser()
    if path.exists():
        return _read_file(path)
    if source in HUB_DATASETS:
        return _read_hub(source, split)
    raise DataError(
        f"text source not found: {source!r} (give a .txt, .jsonl or .parquet file, "
        f"or one of the hub datasets: {', '.join(HUB_DATASETS)}, or '{BUILTIN}')"
    )


def text_sha256(source: str, split: str = "calibration") -> str:
    """SHA-256 of a source's text as llmprune reads it: recorded with the calibration in the
    report, so ``eval`` can tell when it is asked to measure on the calibration text."""
    import hashlib

    return hashlib.sha256(read_text(source, split).encode("utf-8")).hexdigest()


def _read_file(path: Path) -> str:
    if path.is_dir():
        raise DataError(f"text source {path} is a folder; give a .txt, .jsonl or .parquet file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read text source {path}: {err.strerror or err}") from err
    if path.suffix == ".parquet":
        return _join_documents(_parquet_texts(path))
    if b"\x00" in raw:
        raise DataError(f"text source {path} looks binary (contains NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"text source {path} is not UTF-8 text (byte {err.start})") from err
    if path.suffix == ".jsonl":
        return _join_documents(_jsonl_texts(path, text))
    return text


def _jsonl_texts(path: Path, text: str) -> list[str]:
    docs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{path}:{lineno}: each JSONL record needs a string 'text' field")
        docs.append(record["text"])
    return docs


def _parquet_texts(path: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - pyarrow comes with datasets
        raise DataError("reading .parquet needs pyarrow (pip install pyarrow)") from err
    try:
        table = pq.read_table(path, columns=["text"])
    except Exception as err:  # pyarrow raises many types
        raise DataError(f"cannot read parquet {path}: {err}") from err
    return [t for t in table.column("text").to_pylist() if isinstance(t, str)]


def _read_hub(name: str, split: str) -> str:
    dataset, config, field, calib_split, eval_split = HUB_DATASETS[name]
    hub_split = calib_split if split == "calibration" else eval_split
    try:
        import datasets
    except ImportError as err:
        raise DataError(f"hub dataset {name!r} needs the 'datasets' package (pip install datasets)") from err
    from llmprune.model.hub import datasets_offline, unreachable_message

    if not datasets_offline():  # one refused connection, not five retries (offline: the cache decides)
        message = unreachable_message(f"dataset {name!r} ({dataset})")
        if message is not None:
            raise DataError(f"{message}, or pass a local .txt/.jsonl file")
    try:
        if name == "c4":
            ds = datasets.load_dataset(dataset, data_files={hub_split: _C4_FILES[hub_split]}, split=hub_split)
        else:
            ds = datasets.load_dataset(dataset, config, split=hub_split)
    except Exception as err:  # network, auth, missing files: all one message for the user
        raise DataError(
            f"cannot load hub dataset {name!r} ({dataset}): {str(err).splitlines()[0] if str(err) else type(err).__name__}; "
            "pass a local .txt/.jsonl file instead"
        ) from err
    texts = ds[field]
    if name == "c4":
        texts = texts[:20000]
    return _join_documents(texts) if name == "c4" else "".join(texts)


def _join_documents(docs: list[str]) -> str:
    return "\n\n".join(d.strip("\n") for d in docs if d.strip())


def tokenize_stream(tokenizer, text: str) -> torch.Tensor:
    """Tokenize text as one stream of ids (1-D int64), as the tokenizer does by default."""
    ids = tokenizer(text, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def calibration_samples(
    tokenizer, source: str, nsamples: int, seqlen: int, seed: int, minimum: int | None = None
) -> torch.Tensor:
    """``nsamples`` distinct non-overlapping windows of ``seqlen`` tokens, shape ``[N, L]``.

    The windows are a prefix of one seeded permutation, so the first ``n`` of a larger draw are
    exactly the ``n`` windows a draw of ``n`` gives (``--recover-nsamples`` relies on it). With
    ``minimum``, a text too short for ``nsamples`` windows gives all it has, if at least ``minimum``."""
    if nsamples < 1:
        raise DataError(f"--nsamples must be at least 1, got {nsamples}")
    if seqlen < 2:
        raise DataError(f"--seqlen must be at least 2, got {seqlen}")
    stream = tokenize_stream(tokenizer, read_text(source, "calibration"))
    windows = stream.numel() // seqlen
    if source == BUILTIN:
        minimum = 1  # the fallback text is small by design; use all of it
    if minimum is not None and windows < nsamples:
        nsamples = max(windows, minimum)  # all the text holds; the error below names the minimum
    if windows < nsamples:
        raise DataError(
            f"calibration text {source!r} has {stream.numel()} tokens = {windows} windows of {seqlen}; "
            f"{nsamples} samples need {nsamples * seqlen} tokens (lower --nsamples or --seqlen, or add text)"
        )
    gen = torch.Generator().manual_seed(seed)
    spare = stream.numel() - windows * seqlen
    offset = int(torch.randint(0, spare + 1, (1,), generator=gen))
    chosen = torch.randperm(windows, generator=gen)[:nsamples]
    starts = offset + chosen * seqlen
    return torch.stack([stream[s : s + seqlen] for s in starts.tolist()])


def evaluation_windows(tokenizer, source: str, seqlen: int) -> torch.Tensor:
    """Consecutive non-overlapping windows of the evaluation stream, remainder dropped: ``[W, L]``."""
    if seqlen < 2:
        raise DataError(f"--seqlen must be at least 2, got {seqlen}")
    stream = tokenize_stream(tokenizer, read_text(source, "evaluation"))
    windows = stream.numel() // seqlen
    if windows < 1:
        raise DataError(f"evaluation text {source!r} has {stream.numel()} tokens, fewer than one window of {seqlen}")
    return stream[: windows * seqlen].view(windows, seqlen)
