"""The web client's shell fetched cold over loopback from a real ``agentd serve``.

A run is what a browser with an empty cache does: a new connection, ``/``, then every
same-origin file the page names (``src``/``href``: script, stylesheet, manifest, icons) at once,
then the ES modules those scripts import, wave by wave, until none is new. Each run uses a new
client (no connection, no cache kept); the figure is the p50 of ``--runs`` runs (and the worst),
with the bytes and files of one run. The daemon (``tests/daemon_process.py``) is started once
and serves a fresh data dir; its start is not timed.

    .venv/bin/python bench/client_shell.py [--runs 50] [--json]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx2
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import emit, machine, percentile

from tests.daemon_process import DaemonProcess

RUN_TIMEOUT_S = 10.0
MAX_FILES = 200  # a shell naming more than this is a bug, not a benchmark
_REFERENCE = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"'#?]+)""")
_IMPORT = re.compile(r"""(?:\bimport|\bexport)\s*(?:[\w*{}\s,]*?\bfrom\s*)?["']([^"']+\.m?js)["']""")


def same_origin(base: str, found: list[str]) -> list[str]:
    """The paths of ``found`` (relative to ``base``) that stay on this origin."""
    paths = []
    for ref in found:
        if "://" in ref or ref.startswith(("//", "data:", "blob:")):
            continue
        paths.append(urljoin(base, ref))
    return paths


async def one_run(url: str) -> dict[str, Any]:
    """One cold load: the files fetched, their bytes, and the wall time."""
    fetched: dict[str, int] = {}
    began = time.perf_counter()
    with trio.fail_after(RUN_TIMEOUT_S):
        async with httpx2.AsyncClient(base_url=url, timeout=RUN_TIMEOUT_S) as client:

            async def get(path: str, texts: dict[str, str]) -> None:
                response = await client.get(path)
                response.raise_for_status()
                fetched[path] = len(response.content)
                if path.endswith((".js", ".mjs", "/")):
                    texts[path] = response.text

            first: dict[str, str] = {}
            await get("/", first)
            wave = [p for p in same_origin("/", _REFERENCE.findall(first["/"])) if p not in fetched]
            while wave and len(fetched) < MAX_FILES:
                texts: dict[str, str] = {}
                async with trio.open_nursery() as nursery:
                    for path in dict.fromkeys(wave):
                        nursery.start_soon(get, path, texts)
                wave = [
                    found
                    for path, body in texts.items()
                    for found in same_origin(path, _IMPORT.findall(body))
                    if found not in fetched
                ]
    return {"seconds": time.perf_counter() - began, "files": fetched}


async def measure(url: str, runs: int) -> dict[str, Any]:
    results = [await one_run(url) for _ in range(runs)]
    times_ms = [r["seconds"] * 1000 for r in results]
    files = results[-1]["files"]
    return {
        "runs": runs,
        "files": len(files),
        "bytes": sum(files.values()),
        "names": sorted(files),
        "p50_ms": round(percentile(times_ms, 0.5), 2),
        "max_ms": round(max(times_ms), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = max(1, min(args.runs, 1000))
    with tempfile.TemporaryDirectory(prefix="agentd-bench-shell-") as tmp:
        daemon = DaemonProcess(Path(tmp) / "data")
        with daemon:
            result = trio.run(measure, daemon.url, runs)
    emit({**result, "machine": machine()}, args.json)


if __name__ == "__main__":
    main()
