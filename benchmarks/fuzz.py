"""Long-run fuzzing: the properties of tests/test_fuzz.py and tests/test_api_schema.py, each for a fixed time.

    python benchmarks/fuzz.py                              # every target, 60 s each
    python benchmarks/fuzz.py --seconds 10 --targets csv decode
    python benchmarks/fuzz.py --engine hypothesis          # no atheris, even where it is installed

Targets (strategies and property checks: tests/fuzzing.py, the same the test suite runs):
  csv, urllist  generated CSV / list files through sources.expand_sources -> items from the file or SourceError
  decode        mutated real JPEG/PNG/GIF/WebP/TIFF/BMP files through open_image + thumbnail_jpeg + to_array
                -> an RGB image within the pixel limit, or ImageError
  upload        the same inputs through the API's upload check -> a decoded image, or HTTP 413/415/422
  api           schemathesis requests from the OpenAPI schema to a real server on 127.0.0.1 (the built-in
                sample index; URL fetches cut off from the network) -> no 5xx, answers match the schema

Engines: Hypothesis runs every target in batches of examples with successive seeds until the
target's time is up (no shrinking: a failing input is saved as it was). decode and upload run
on atheris instead when it is installed (coverage-guided libFuzzer over Pillow's and ImageFinder's
Python code, in a subprocess, seeded with the same real files). A single input running longer
than --hang-seconds counts as a failure (a hang).

Reports per target: inputs tried, inputs/s, outcomes, failures (and distinct failures, each with
its first failing input) -> --json (benchmarks/results/fuzz.json). Exit status 1 if anything failed.
Under atheris, `inputs` is what the Python check saw (saved every 500 inputs, as libFuzzer ends
the process itself) and `libfuzzer_runs` libFuzzer's own count; `coverage` its final cov/ft/corpus.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the shared strategies and properties: tests/fuzzing.py

TARGETS = ("csv", "urllist", "decode", "upload", "api")
BYTE_TARGETS = ("decode", "upload")  # the targets atheris can drive (their input is raw bytes)
BATCH = 50  # Hypothesis examples per seed
MAX_SAVED_INPUT = 64 * 1024


class Hang(BaseException):
    """One input ran longer than --hang-seconds (BaseException: no `except Exception` swallows it)."""


@contextlib.contextmanager
def hang_alarm(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise Hang(f"one input ran for more than {seconds:g} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def signature(exc: BaseException) -> str:
    """Type and innermost location: one entry per distinct bug, however its inputs vary."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    first_line = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__} at {where}: {first_line[:160]}"


def encode_input(value: Any) -> dict[str, Any]:
    data = getattr(value, "data", value)
    if isinstance(data, bytes):
        return {"bytes_b64": base64.b64encode(data[:MAX_SAVED_INPUT]).decode(), "size": len(data),
                "repr": repr(value)[:1000]}
    return {"repr": repr(value)[:4000]}


class Tally:
    """Inputs tried, outcomes and failures of one target."""

    def __init__(self, name: str, engine: str) -> None:
        self.name, self.engine = name, engine
        self.inputs = 0
        self.outcomes: Counter[str] = Counter()
        self.failures = 0
        self.distinct: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}

    def failed(self, exc: BaseException, value: Any) -> None:
        self.failures += 1
        key = signature(exc)
        if key not in self.distinct:
            self.distinct[key] = {"count": 0, "input": encode_input(value),
                                  "traceback": "".join(traceback.format_exception(exc))[-3000:]}
        self.distinct[key]["count"] += 1

    def report(self, seconds: float) -> dict[str, Any]:
        return {"engine": self.engine, "seconds": round(seconds, 1), "inputs": self.inputs,
                "inputs_per_s": round(self.inputs / seconds, 1) if seconds else None,
                "outcomes": dict(self.outcomes.most_common()), "failures": self.failures,
                "distinct_failures": self.distinct, **self.extra}


def run_hypothesis(tally: Tally, strategy: Any, check: Callable[[Any], str], seconds: float, hang: float,
                   seed: int, max_batches: int | None = None) -> None:
    """Batches of examples with successive seeds until `seconds` are spent; every call counted."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as with_seed

    def counted(value: Any) -> None:
        tally.inputs += 1
        try:
            with hang_alarm(hang):
                tally.outcomes[check(value)] += 1
        except (Exception, Hang) as exc:
            tally.failed(exc, value)
            raise

    deadline = time.monotonic() + seconds
    batch = 0
    while time.monotonic() < deadline and (max_batches is None or batch < max_batches):
        @with_seed(seed + batch)
        @settings(max_examples=BATCH, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def prop(value: Any) -> None:
            counted(value)

        with contextlib.suppress(Exception, Hang):  # already recorded by `counted`
            prop()
        batch += 1
    tally.extra["batches"] = tally.extra.get("batches", 0) + batch


# --- atheris (coverage-guided) for the byte targets ----------------------------------------------------


def atheris_available() -> str | None:
    try:
        from importlib.metadata import version

        import atheris  # noqa: F401
    except ImportError:
        return None
    return version("atheris")


def run_atheris(tally: Tally, target: str, seconds: float, hang: float, work: Path) -> None:
    """libFuzzer in a subprocess (it exits the process when done), seeded with the real files."""
    import fuzzing

    corpus, artifacts = work / f"corpus-{target}", work / f"artifacts-{target}"
    corpus.mkdir()
    artifacts.mkdir()
    for name, data in fuzzing.seed_images().items():
        (corpus / name).write_bytes(data)
    seeds = len(list(corpus.iterdir()))
    state = work / f"state-{target}.json"
    cmd = [sys.executable, __file__, "--atheris-worker", target, "--state", str(state), "--",
           f"-max_total_time={int(seconds)}", f"-timeout={int(max(hang, 1))}", "-rss_limit_mb=3072",
           "-print_final_stats=1", f"-artifact_prefix={artifacts}/", str(corpus)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=seconds + 300)
    log = proc.stderr + proc.stdout
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    final = re.findall(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/", log)
    counted = json.loads(state.read_text()) if state.is_file() else {"inputs": 0, "outcomes": {}, "failures": []}
    tally.inputs = counted["inputs"]
    tally.outcomes.update(counted["outcomes"])
    for failure in counted["failures"]:
        tally.failures += 1
        entry = tally.distinct.setdefault(failure["signature"], {"count": 0, "input": failure["input"],
                                                                  "traceback": failure["traceback"]})
        entry["count"] += 1
    tally.extra.update({
        "libfuzzer_runs": int(done.group(1)) if done else None,
        "coverage": {"cov": int(final[-1][1]), "ft": int(final[-1][2]), "corpus": int(final[-1][3]),
                     "seed_files": seeds} if final else None,
        "exit_code": proc.returncode,
    })
    crashes = sorted(p.name for p in artifacts.iterdir())
    if proc.returncode != 0 or crashes:  # a hang (-timeout), an out-of-memory or a native crash
        tally.failures += 1
        tally.distinct[f"libFuzzer exit {proc.returncode}: {', '.join(crashes) or 'no artifact'}"] = {
            "count": 1, "input": encode_input((artifacts / crashes[0]).read_bytes()) if crashes else None,
            "traceback": log[-3000:]}


def atheris_worker(target: str, state: Path, libfuzzer_args: list[str]) -> None:
    """Runs inside the subprocess: instrument Pillow and ImageFinder, then fuzz the shared check."""
    import atheris

    with atheris.instrument_imports(include=["PIL", "imagefinder"]):
        import fuzzing

        import imagefinder.api.uploads  # noqa: F401 - instrumented before check_upload imports it

    check = {"decode": fuzzing.check_decode, "upload": fuzzing.check_upload}[target]
    counts: dict[str, Any] = {"inputs": 0, "outcomes": Counter(), "failures": []}
    seen: set[str] = set()

    def save() -> None:
        state.write_text(json.dumps(counts))

    def one_input(data: bytes) -> None:
        counts["inputs"] += 1
        try:
            counts["outcomes"][check(data)] += 1
        except Exception as exc:  # noqa: BLE001 - recorded, not raised: libFuzzer would stop at the first
            key = signature(exc)
            counts["failures"].append({"signature": key, "traceback": "".join(traceback.format_exception(exc))[-3000:],
                                       "input": encode_input(data) if key not in seen else None})
            seen.add(key)
            save()
        if counts["inputs"] % 500 == 0:
            save()  # libFuzzer ends the process with exit(): the last state on disk is what counts

    with fuzzing.small_pixel_limit():
        atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
        atheris.Fuzz()  # never returns: libFuzzer exits the process


# --- the targets -------------------------------------------------------------------------------------


def fuzz_sources(target: str, seconds: float, hang: float, seed: int, work: Path) -> Tally:
    import fuzzing

    tally = Tally(target, "hypothesis")
    directory = work / target
    directory.mkdir()
    strategy, check = ((fuzzing.csv_documents(), fuzzing.check_csv) if target == "csv"
                       else (fuzzing.list_documents(), fuzzing.check_list))
    run_hypothesis(tally, strategy, lambda doc: check(doc, directory), seconds, hang, seed)
    return tally


def fuzz_bytes(target: str, seconds: float, hang: float, seed: int, work: Path, engine: str) -> Tally:
    import fuzzing

    if engine == "atheris":
        tally = Tally(target, f"atheris {atheris_available()}")
        run_atheris(tally, target, seconds, hang, work)
        return tally
    tally = Tally(target, "hypothesis")
    check = {"decode": fuzzing.check_decode, "upload": fuzzing.check_upload}[target]
    with fuzzing.small_pixel_limit():
        run_hypothesis(tally, fuzzing.mutated_images(fuzzing.seed_images()), lambda image: check(image.data),
                       seconds, hang, seed)
    return tally


def fuzz_api(seconds: float, hang: float, seed: int, work: Path) -> Tally:
    """Round-robin over every operation x body type x positive/negative until the time is up."""
    import fuzzing
    import schemathesis

    from imagefinder.api import create_app
    from imagefinder.api.testing import serve_in_thread

    tally = Tally("api", f"hypothesis (schemathesis {schemathesis.__version__})")
    started = time.monotonic()
    index = fuzzing.build_api_index(work / "api")
    tally.extra["setup_seconds"] = round(time.monotonic() - started, 1)
    # the multipart parser logs every malformed header the negative cases send: expected here
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    per_case: Counter[str] = Counter()
    with fuzzing.offline_urls(), serve_in_thread(create_app(index, fuzzing.api_settings())) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        strategies = {c: fuzzing.api_strategy(schema, *c) for c in fuzzing.API_CASES}
        deadline = time.monotonic() + seconds
        round_ = 0
        while time.monotonic() < deadline:
            for case in fuzzing.API_CASES:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                before = tally.inputs
                run_hypothesis(tally, strategies[case], fuzzing.check_api_case, left, max(hang, 30),
                               seed + round_, max_batches=1)
                per_case[fuzzing.api_case_id(*case)] += tally.inputs - before
            round_ += 1
    tally.extra.update({"rounds": round_, "requests_per_case": dict(per_case)})
    return tally


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--atheris-worker"]:
        target, state, rest = argv[1], Path(argv[3]), argv[5:]
        atheris_worker(target, state, rest)
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60, help="fuzzing time per target (default 60)")
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    p.add_argument("--api", action="store_true", help="only the API target (same as --targets api)")
    p.add_argument("--engine", choices=("auto", "hypothesis"), default="auto",
                   help="auto: atheris for decode/upload where installed, else Hypothesis")
    p.add_argument("--hang-seconds", type=float, default=10, help="one input longer than this is a hang")
    p.add_argument("--seed", type=int, default=0, help="first Hypothesis seed (runs are reproducible)")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "fuzz.json")
    args = p.parse_args(argv)
    targets = ["api"] if args.api else args.targets
    # Pillow warns about every corrupt EXIF block and truncated tag it skips: expected here
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
    atheris_version = atheris_available() if args.engine == "auto" else None

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="imagefinder-fuzz-") as tmp:
        work = Path(tmp)
        for target in targets:
            print(f"fuzzing {target} for {args.seconds:g} s ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            if target in ("csv", "urllist"):
                tally = fuzz_sources(target, args.seconds, args.hang_seconds, args.seed, work)
            elif target in BYTE_TARGETS:
                engine = "atheris" if atheris_version else "hypothesis"
                tally = fuzz_bytes(target, args.seconds, args.hang_seconds, args.seed, work, engine)
            else:
                tally = fuzz_api(args.seconds, args.hang_seconds, args.seed, work)
            results[target] = tally.report(time.monotonic() - started - tally.extra.get("setup_seconds", 0))
            r = results[target]
            print(f"  {target}: {r['inputs']} inputs in {r['seconds']} s ({r['engine']}), "
                  f"{r['failures']} failures ({len(r['distinct_failures'])} distinct); outcomes {r['outcomes']}",
                  file=sys.stderr, flush=True)

    import hypothesis

    out = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/fuzz.py " + " ".join(argv),
        "seconds_per_target": args.seconds,
        "hang_seconds": args.hang_seconds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "engines": {"hypothesis": hypothesis.__version__, "atheris": atheris_version},
        "targets": results,
        "total_inputs": sum(r["inputs"] for r in results.values()),
        "total_failures": sum(r["failures"] for r in results.values()),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 1 if out["total_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
