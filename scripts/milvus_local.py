"""A real Milvus standalone server (PyPI `milvus==2.3.5`) reachable only on 127.0.0.1:PORT.

    python scripts/milvus_local.py --data DIR --port 19530 [--ready-file FILE]
    imagefinder index photos/ --out idx --store milvus://127.0.0.1:19530

Why a network namespace: Milvus 2.3.5 binds every gRPC port (proxy, coordinators, nodes,
metrics) to all interfaces; its `ip` settings only change the address it advertises, and the
package's config has no listen address. So this process opens the one public socket on
127.0.0.1:PORT first, then moves itself into a new network namespace (only a loopback there),
starts Milvus inside it with its default ports, and relays each connection to Milvus's proxy.
Nothing of Milvus is reachable from outside this machine, and two servers never clash on ports.
Needs root or unprivileged user namespaces (unshare). SIGTERM/SIGINT stop Milvus gracefully
(its data is kept in DIR: start again on the same DIR to reopen it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PROXY_PORT = 19530  # Milvus's own port inside the namespace
STOP_GRACE_S = 45
# Milvus's own default waits up to 1800 s for a graceful stop that in this standalone build
# often never completes; its data is safe anyway (write-ahead log in DIR), so force quit sooner.
GRACEFUL_STOP_TIMEOUT_S = 20


def enter_private_network() -> None:
    """Move this process into a new network namespace and bring its loopback up."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWNET) != 0:
        # not root: an unprivileged user namespace may still allow a network namespace
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET) failed: {os.strerror(err)} (needs root or user namespaces)")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def relay(listener: socket.socket) -> None:
    """Accept on the host's 127.0.0.1:PORT; each connection is joined to Milvus in the namespace."""
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return  # listener closed: stopping
        try:
            upstream = socket.create_connection(("127.0.0.1", PROXY_PORT), timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def start_milvus(data: Path):
    from milvus import MilvusServer, MilvusServerConfig  # the `milvus` package (PyPI milvus==2.3.5)

    server = MilvusServer(MilvusServerConfig(), wait_for_started=False)
    server.set_base_dir(str(data))
    server.listen_port = PROXY_PORT
    server.config.set("common.gracefulStopTimeout", GRACEFUL_STOP_TIMEOUT_S)
    server.start()
    return server


def stop_milvus(server) -> None:
    """SIGTERM and wait (the package's own stop() kills after 1 s), then let it close its logs."""
    proc = server.server_proc
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="Milvus data directory (kept across restarts)")
    p.add_argument("--port", type=int, default=19530, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--ready-file", type=Path, help="written with the port once Milvus answers")
    p.add_argument("--timeout", type=float, default=240, help="seconds to wait for Milvus to start")
    args = p.parse_args(argv)
    args.data.mkdir(parents=True, exist_ok=True)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))  # in the host's namespace: sockets keep theirs
    listener.listen(64)
    port = listener.getsockname()[1]
    enter_private_network()

    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    server = start_milvus(args.data.resolve())
    try:
        server.wait_started(timeout=args.timeout * 1000)
        threading.Thread(target=relay, args=(listener,), daemon=True).start()
        if args.ready_file:
            tmp = args.ready_file.with_suffix(".tmp")
            tmp.write_text(str(port))
            tmp.replace(args.ready_file)
        print(f"Milvus {args.data} on 127.0.0.1:{port} (pid {server.server_proc.pid})", file=sys.stderr, flush=True)
        while not stopping.is_set():
            if server.server_proc.poll() is not None:
                print(f"Milvus exited with code {server.server_proc.returncode}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        listener.close()
        stop_milvus(server)


if __name__ == "__main__":
    sys.exit(main())
