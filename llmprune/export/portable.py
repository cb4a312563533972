"""Make an exported folder usable by other users and other library versions.

- ``model.safetensors`` is written by transformers through a private temporary file (mode 0600);
  a server running as another user could not read it. Every file and folder of an export gets the
  mode the user's umask gives new files (``0666 & ~umask``, folders ``0777 & ~umask``).
- transformers 5 saves ``tokenizer_class: TokenizersBackend`` (a class transformers 4.x does not
  have) and copies the loading keys of the input (``is_local``, ``local_files_only``, ...) into
  ``tokenizer_config.json``. ``PreTrainedTokenizerFast`` reads the same ``tokenizer.json`` in 4.x
  and 5.x with the same ids, and loading keys describe one machine's load, not the tokenizer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TOKENIZER_CONFIG = "tokenizer_config.json"
#: Tokenizer class names that exist only in transformers 5 → a class both 4.x and 5.x load.
PORTABLE_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}
#: ``from_pretrained`` arguments that transformers copies into tokenizer_config.json.
LOADING_KEYS = (
    "is_local",
    "local_files_only",
    "cache_dir",
    "force_download",
    "proxies",
    "token",
    "use_auth_token",
    "revision",
    "subfolder",
    "trust_remote_code",
    "_commit_hash",
    "_from_auto",
    "_from_pipeline",
)


def current_umask() -> int:
    """The process umask (read from /proc on Linux, where reading it does not change it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(folder: Path) -> None:
    """Give every file and folder under ``folder`` (and ``folder``) the umask's default mode."""
    mask = current_umask()
    folder = Path(folder)
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def portable_tokenizer_config(folder: Path) -> None:
    """Rewrite ``tokenizer_config.json`` with a portable class name and without loading keys."""
    path = Path(folder) / TOKENIZER_CONFIG
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    changed = False
    for key in LOADING_KEYS:
        if key in data:
            del data[key]
            changed = True
    portable = PORTABLE_TOKENIZER_CLASSES.get(data.get("tokenizer_class"))
    if portable and (Path(folder) / "tokenizer.json").is_file():
        data["tokenizer_class"] = portable
        changed = True
    if changed:
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
