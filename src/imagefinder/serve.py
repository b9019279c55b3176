"""Run the API and the web page together: `python -m imagefinder.serve` (what `make run` does).

Builds the built-in sample index first when no index is given and none is built yet, then
starts two child processes - the API (uvicorn, :8000) and the web page (Flask, :5000) - and
stops both on Ctrl-C or SIGTERM, or as soon as either one exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 120.0


class _Stop(Exception):
    """Raised by the SIGINT/SIGTERM handler to leave the wait loop and stop both servers."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m imagefinder.serve",
                                description="Start the ImageFinder API and web page together; Ctrl-C stops both.")
    p.add_argument("--index", type=Path, metavar="DIR",
                   help="index directory (default: $IMAGEFINDER_INDEX, else the built-in sample, built if missing)")
    p.add_argument("--host", default="127.0.0.1", help="address both servers listen on (default 127.0.0.1)")
    p.add_argument("--api-port", type=int, default=8000, help="API port (default 8000)")
    p.add_argument("--web-port", type=int, default=5000, help="web page port (default 5000)")
    p.add_argument("--allow-private-urls", action="store_true",
                   help="let URL searches reach localhost and private networks (local use only)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    index = args.index or (Path(os.environ["IMAGEFINDER_INDEX"]) if os.environ.get("IMAGEFINDER_INDEX") else None)
    if index is None:
        from .api.sample_index import default_index, sample_dir

        if not (sample_dir() / "index" / "manifest.json").is_file():
            print("building the sample index (first run only)...", file=sys.stderr, flush=True)
        index = default_index()
    local = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    api_url = f"http://{local}:{args.api_port}"
    web_url = f"http://{local}:{args.web_port}"
    api_cmd = [sys.executable, "-m", "imagefinder.api", "--host", args.host, "--port", str(args.api_port),
               "--index", str(index)]
    if args.allow_private_urls:
        api_cmd.append("--allow-private-urls")
    web_cmd = [sys.executable, "-m", "imagefinder.web", "--host", args.host, "--port", str(args.web_port),
               "--api-url", api_url]

    children: list[subprocess.Popen] = []
    # Both signals stop both servers, even where the shell started us with SIGINT ignored.
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        children.append(subprocess.Popen(api_cmd))
        if not _wait_ready(f"{api_url}/health", children[0]):
            return children[0].poll() or 1
        children.append(subprocess.Popen(web_cmd))
        _wait_ready(f"{web_url}/healthz", children[1], timeout=30)
        print(f"\n  ImageFinder is running: open {web_url}\n  API {api_url} (docs {api_url}/docs)"
              "\n  Ctrl-C stops both.\n", file=sys.stderr, flush=True)
        while True:
            for child in children:
                code = child.poll()
                if code is not None:  # 0: it was asked to stop (Ctrl-C reaches the whole process group)
                    name = "API" if child is children[0] else "web page"
                    print(f"the {name} server exited (code {code}); stopping the other", file=sys.stderr)
                    return code
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        print("\nstopping...", file=sys.stderr, flush=True)
        return 0
    finally:
        stop_children(children)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop()


def wait_ready(url: str, child: subprocess.Popen | None, timeout: float = READY_TIMEOUT_S,
               interval: float = 0.3) -> str:
    """Poll `url` until it answers 200 ("ready"), the child exits ("exited"), or "timeout"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.poll() is not None:
            return "exited"
        try:
            if httpx.get(url, timeout=2.0, trust_env=False).status_code == 200:
                return "ready"
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    return "timeout"


def _wait_ready(url: str, child: subprocess.Popen, timeout: float = READY_TIMEOUT_S) -> bool:
    """False if the child died; a slow start only warns (the server may still come up)."""
    state = wait_ready(url, child, timeout)
    if state == "timeout":
        print(f"warning: {url} did not answer within {timeout:.0f} s; carrying on", file=sys.stderr)
    return state != "exited"


def stop_children(children: list[subprocess.Popen], grace_s: float = STOP_GRACE_S,
                  sig: signal.Signals = signal.SIGTERM) -> None:
    """Send `sig` to each child that is still running, then SIGKILL whatever outlives the grace period."""
    for child in children:
        if child.poll() is None:
            child.send_signal(sig)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
