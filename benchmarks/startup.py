"""Whole-process start-up: `imagefinder --help` and `imagefinder search INDEX QUERY`, wall time.

Each command is run --repeat times as a fresh process (the console script of this venv), next to
`python -c pass` (the interpreter's own start-up, the floor); with
--baseline SRC the same commands also run with PYTHONPATH=SRC (e.g. another checkout's src/),
interleaved run by run so both see the same machine load. Reports median, min and max seconds of
wall time and of the child's CPU time (user + system: less disturbed by other jobs on a loaded
machine than wall time).

    python benchmarks/startup.py --index /tmp/idx1000 --query q.jpg --repeat 9
    python benchmarks/startup.py --index /tmp/idx1000 --query q.jpg --baseline /work/main/src

The index must be one both code versions can read (build it with the older one).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYCACHE = os.environ.get("PYTHONPYCACHEPREFIX") or "/tmp/imagefinder-startup-pycache"


def _console_script() -> str:
    here = Path(sys.executable).parent / "imagefinder"
    return str(here) if here.is_file() else (shutil.which("imagefinder") or "imagefinder")


def _time(cmd: list[str], src: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child: user + system) of one run."""
    # Byte-code is cached (outside the source trees) as an installed package's would be: a run
    # that compiles every module measures the compiler, not start-up.
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONPYCACHEPREFIX": PYCACHE}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True, help="a 1000-image index")
    parser.add_argument("--query", type=Path, required=True, help="query image file")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--baseline", type=Path, help="src/ directory of the code to compare with")
    args = parser.parse_args()
    exe = _console_script()
    commands = {"python -c pass": [sys.executable, "-c", "pass"],  # the interpreter's own floor
                "--help": [exe, "--help"], "search": [exe, "search", str(args.index), str(args.query), "-k", "5"]}
    versions = {"this": REPO / "src", **({"baseline": args.baseline} if args.baseline else {})}
    for cmd in commands.values():  # warm the page and byte-code caches once per version
        for src in versions.values():
            _time(cmd, src)
    times: dict[str, dict[str, list[tuple[float, float]]]] = {v: {c: [] for c in commands} for v in versions}
    for _ in range(args.repeat):
        for cname, cmd in commands.items():
            for vname, src in versions.items():
                times[vname][cname].append(_time(cmd, src))

    def stats(values: list[float]) -> dict[str, float]:
        return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
                "max": round(max(values), 3)}

    out: dict[str, object] = {
        v: {c: {"wall": stats([w for w, _ in t]), "cpu": stats([c for _, c in t])} for c, t in per.items()}
        for v, per in times.items()}
    out["load_average"] = list(os.getloadavg())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
