"""`smsgw fcm-standin`: the local FCM stand-in (gateway/push/standin.py) as a process, so a
server and `smsgw simulate --doze` can be tried together on one machine without Google
(docs/push.md). It writes a throwaway service-account JSON whose `token_uri` points at itself."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    standin = sub.add_parser(
        "fcm-standin",
        help="a local stand-in for FCM and Google's token endpoint, for trying wake-ups (docs/push.md)",
    )
    standin.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT on loopback (default: a free port)")
    standin.add_argument("--credentials-out", type=Path, required=True,
                         help="write the stand-in's service-account JSON here (0600): fcm.credentials_file")


def run(args: argparse.Namespace) -> int:
    from gateway.app import split_hostport
    from gateway.push.standin import FcmStandIn

    host, port = split_hostport(args.listen)
    if host not in ("127.0.0.1", "::1", "localhost"):
        print("smsgw fcm-standin: --listen must be a loopback address", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with FcmStandIn(host=host, port=port) as standin:
        path = standin.write_service_account(args.credentials_out)
        print(f"FCM stand-in at {standin.base_url}; start the worker (or serve) with", flush=True)
        print(f"  SMSGW_FCM__CREDENTIALS_FILE={path} SMSGW_FCM__BASE_URL={standin.base_url}", flush=True)
        while not stop.wait(1.0):  # bounded waits: a signal is seen within a second
            pass
        print(f"smsgw fcm-standin: stopping after {len(standin.received)} pushes", flush=True)
    return 0
