"""Regenerate llmprune/resources/builtin_calib.txt from Python standard-library docstrings (PSF licence).

python scripts/make_builtin_calib.py
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

MODULES = (
    "abc argparse ast asyncio base64 bisect calendar collections concurrent.futures contextlib copy csv "
    "dataclasses datetime decimal difflib email enum fractions functools glob gzip hashlib heapq html "
    "http.client imaplib inspect io ipaddress itertools json logging mailbox math mimetypes multiprocessing "
    "numbers operator os pathlib pickle pprint queue random re sched secrets selectors shelve shlex shutil "
    "signal smtplib socket sqlite3 statistics string struct subprocess tarfile tempfile textwrap threading "
    "time timeit tkinter tokenize traceback types typing unittest urllib.parse urllib.request uuid warnings "
    "weakref xml.etree.ElementTree zipfile zlib"
).split()
LIMIT = 400_000
OUT = Path(__file__).resolve().parents[1] / "llmprune" / "resources" / "builtin_calib.txt"


def main() -> None:
    docs: list[str] = []
    seen: set[str] = set()
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:
            continue
        for obj in [module] + [getattr(module, a) for a in sorted(dir(module)) if not a.startswith("_")]:
            try:
                doc = inspect.getdoc(obj)
            except Exception:
                continue
            owner = str(getattr(obj, "__module__", name) or name)
            if not doc or len(doc) < 200 or doc in seen or not owner.startswith(name.split(".")[0]):
                continue
            seen.add(doc)
            docs.append(doc.strip())
    text = "\n\n".join(docs)[:LIMIT]
    OUT.write_text(text[: text.rfind("\n\n")] + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(docs)} documents)")


if __name__ == "__main__":
    main()
