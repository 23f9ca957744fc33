"""``cxrexplain-gateway --config gateway.yaml``: run the PACS gateway until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from .config import ConfigError, load_config
from .gateway import Gateway


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cxrexplain-gateway",
        description="A DICOM node that explains chest X-rays received by C-STORE with a cxrexplain service "
                    "and sends the results (SR, Parametric Maps, Secondary Captures) to a PACS. "
                    "Not for diagnostic use.")
    parser.add_argument("--config", required=True, help="the gateway's YAML configuration (docs/gateway.md)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--stop-timeout", type=float, default=30.0,
                        help="seconds to let instances in flight finish on stop (the rest stay pending on "
                             "disk)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pynetdicom logs every association and PDU at INFO (DEBUG dumps datasets, patient data included).
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"cxrexplain-gateway: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        gateway = Gateway(config).start()
    except OSError as exc:  # the port is taken, the storage is not writable...
        print(f"cxrexplain-gateway: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        stop.wait()
    finally:
        gateway.stop(args.stop_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
