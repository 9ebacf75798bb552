"""``metastream broker start|stop|status``: a local broker for trying things out.

``start`` runs in the foreground until Ctrl-C or ``metastream broker stop``
(from another shell), which finds it through a small state file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.tools.brokers import start_broker
from pipeline.tools.brokers.apache_kafka import cache_root


def state_file() -> Path:
    """Where a running ``broker start`` records its pid and bootstrap address."""
    return cache_root() / "broker.json"


def cmd_start(args: argparse.Namespace) -> int:
    path = state_file()
    if path.exists():
        state = json.loads(path.read_text())
        if _alive(state["pid"]):
            print(
                f"a broker is already running at {state['bootstrap']} (pid {state['pid']})", file=sys.stderr
            )
            return 1
    print(f"starting {args.kind} broker…", file=sys.stderr)
    broker = start_broker(args.kind, args.data_dir, args.port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"pid": os.getpid(), "bootstrap": broker.bootstrap, "kind": args.kind}
        path.write_text(json.dumps({**state, "data_dir": args.data_dir}))
        print(f"broker ready: kafka://{broker.bootstrap}  (stop with Ctrl-C or `metastream broker stop`)")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        broker.close()
        path.unlink(missing_ok=True)
        print("broker stopped", file=sys.stderr)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    path = state_file()
    if not path.exists():
        print("no broker started with `metastream broker start` is running", file=sys.stderr)
        return 1
    pid = json.loads(path.read_text())["pid"]
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            print(f"broker process {pid} did not stop within {args.timeout:.0f} s", file=sys.stderr)
            return 1
    path.unlink(missing_ok=True)
    print("broker stopped")
    return 0


def running_broker() -> dict[str, Any] | None:
    """The state (``pid``, ``bootstrap``, ``kind``) of the running ``broker start``, if any."""
    path = state_file()
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if _alive(state["pid"]) else None


def cmd_status(args: argparse.Namespace) -> int:
    state = running_broker()
    if state is not None:
        print(f"running: kafka://{state['bootstrap']} ({state['kind']}, pid {state['pid']})")
        return 0
    print("not running")
    return 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # An exited child its parent has not reaped yet still answers signals.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def add_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``broker start|stop|status``."""
    p = sub.add_parser("broker", help="start or stop a local Kafka broker (Apache Kafka or embedded)")
    actions = p.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="run a broker in the foreground")
    start.add_argument(
        "--kind",
        choices=["kafka", "embedded"],
        default="kafka",
        help="kafka: Apache Kafka (KRaft, jars from Maven Central); embedded: Tansu, memory only",
    )
    start.add_argument(
        "--data-dir",
        metavar="DIR",
        help="kafka: keep data here; started again on DIR it has the same port and topics "
        "(default: a temporary directory, removed at stop)",
    )
    start.add_argument(
        "--port", type=int, help="kafka: client port (default: DIR's last one, else a free one)"
    )
    start.set_defaults(func=cmd_start)
    stop = actions.add_parser("stop", help="stop the broker started by `broker start`")
    stop.add_argument("--timeout", type=float, default=30.0)
    stop.set_defaults(func=cmd_stop)
    actions.add_parser("status", help="is a broker running?").set_defaults(func=cmd_status)
