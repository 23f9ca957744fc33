"""Start and stop a real TorchServe (Java frontend) with all its state under one run folder.

Used by ``make serve`` / ``make stop``, the end-to-end tests and the benchmarks, so all three start the
server the same way: TEMP/TMPDIR, the pid file, ``key_file.json`` and logs live in ``run_dir``; ports come
from the arguments (free ports for tests) and override the store's ``config.properties``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from .recipe import STREAM_SUFFIX

BASE_CONFIG = Path(__file__).resolve().parents[1] / "model_store" / "config.properties"
# Logging of the Java frontend: its own files, once per line, no per-request chatter (see the file's comment).
LOG_CONFIG = BASE_CONFIG.with_name("log4j2.xml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Ports:
    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071

    @classmethod
    def free(cls) -> Ports:
        return cls(*(free_port() for _ in range(5)))


def read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


class TorchServe:
    """A TorchServe process. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(
        self,
        store: Path,
        run_dir: Path,
        models: str = "all",
        ports: Ports | None = None,
        config: Path = BASE_CONFIG,
        overrides: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ):
        self.store = Path(store).resolve()
        self.run_dir = Path(run_dir).resolve()
        self.models = models
        self.ports = ports or Ports()
        self.config = config
        self.overrides = overrides or {}
        self.host = host  # inference, gRPC inference and metrics bind here; management stays on loopback

    # --- addresses -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports.grpc_inference}"

    def key(self, kind: str = "inference") -> str:
        """The current token of ``kind`` (inference | management) from ``key_file.json``."""
        data = json.loads((self.run_dir / "key_file.json").read_text())
        return str(data[kind]["key"])

    def headers(self, kind: str = "inference") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key(kind)}"}

    # --- lifecycle -------------------------------------------------------------------------------------
    def _write_config(self) -> Path:
        props = read_properties(self.config)
        props.update(
            inference_address=f"http://{self.host}:{self.ports.inference}",
            management_address=f"http://127.0.0.1:{self.ports.management}",
            metrics_address=f"http://{self.host}:{self.ports.metrics}",
            grpc_inference_address=self.host,
            grpc_management_address="127.0.0.1",
            grpc_inference_port=str(self.ports.grpc_inference),
            grpc_management_port=str(self.ports.grpc_management),
            model_store=str(self.store),
        )
        if "metrics_config" in props and not Path(props["metrics_config"]).is_absolute():
            props["metrics_config"] = str((self.config.parent / props["metrics_config"]).resolve())
        props.update(self.overrides)
        path = self.run_dir / "config.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _env(self) -> dict[str, str]:
        tmp = self.run_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        logs = self.run_dir / "logs"
        logs.mkdir(exist_ok=True)
        return {**os.environ, "TEMP": str(tmp), "TMPDIR": str(tmp), "LOG_LOCATION": str(logs),
                "METRICS_LOCATION": str(logs)}

    def start(self, timeout: float = 180.0) -> TorchServe:
        """Start in the background and wait until every model has a ready worker."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "key_file.json").unlink(missing_ok=True)
        config = self._write_config()
        cmd = [str(Path(sys.executable).with_name("torchserve")), "--start", "--foreground", "--ncs",
               "--ts-config", str(config), "--log-config", str(LOG_CONFIG), "--model-store", str(self.store),
               "--models", self.models]
        log = open(self.run_dir / "torchserve.out", "ab")  # noqa: SIM115 - lives as long as the server
        self.process = subprocess.Popen(cmd, cwd=self.run_dir, env=self._env(), stdout=log, stderr=log,
                                        start_new_session=True)
        (self.run_dir / "launcher.json").write_text(json.dumps({"pgid": self.process.pid,
                                                                 "ports": asdict(self.ports)}))
        try:
            self.wait_ready(timeout)
        except Exception:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited with {self.process.returncode}; see {self.run_dir}/logs")
            try:
                models = httpx.get(f"{self.management_url}/models", headers=self.headers("management"), timeout=5)
                names = [m["modelName"] for m in models.json().get("models", [])] if models.is_success else []
                if names and all(self._ready(name) for name in names):
                    return
            except (OSError, httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"TorchServe not ready after {timeout:.0f} s; see {self.run_dir}/logs")

    def _ready(self, name: str) -> bool:
        r = httpx.get(f"{self.management_url}/models/{name}", headers=self.headers("management"), timeout=5)
        workers = r.json()[0].get("workers", []) if r.is_success else []
        return any(w.get("status") == "READY" for w in workers)

    def stop(self, timeout: float = 30.0) -> None:
        stop_process_group(self.process.pid, timeout, self.process)

    def __enter__(self) -> TorchServe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process_group(pgid: int, timeout: float = 30.0, leader: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the server's process group (frontend, workers), SIGKILL what is left after ``timeout``.

    ``leader`` is the group leader when this process started it: it is reaped here, or it would linger as a
    zombie that keeps the group alive.
    """
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if leader is not None:
                leader.poll()
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def _cli_start(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    server = TorchServe(Path(args.store), run_dir, host=args.host)
    server.start(timeout=args.timeout)
    names = [p.stem for p in sorted(Path(args.store).glob("*.mar"))]
    first = next((n for n in names if not n.endswith(("-ae", STREAM_SUFFIX))), names[0] if names else "MODEL")
    print(f"TorchServe is up: REST {server.url}, gRPC {server.grpc_target}, metrics {server.metrics_url}")
    print(f"Models: {', '.join(names)}. Logs: {run_dir}/logs. Stop it with: make stop")
    read_key = f"python -c \"import json;print(json.load(open('{run_dir}/key_file.json'))['inference']['key'])\""
    print("Token authorization is on; read the current inference key (it expires) with:")
    print(f"  {read_key}")
    print("Then, for example:")
    print(f"  KEY=$({read_key})")
    print(f"  curl -H \"Authorization: Bearer $KEY\" {server.url}/explanations/{first} "
          "-F data=@docs/example.png -F methods=cam,rap -F targets=positive")
    if args.foreground:  # containers: stay in the foreground as long as the server lives
        signal.signal(signal.SIGTERM, lambda *_: server.stop())
        return server.process.wait()
    return 0


def _cli_stop(args: argparse.Namespace) -> int:
    state = Path(args.run_dir) / "launcher.json"
    if not state.exists():
        print("no demo TorchServe is running (no launcher.json)")
        return 0
    stop_process_group(int(json.loads(state.read_text())["pgid"]))
    state.unlink()
    (Path(args.run_dir) / "key_file.json").unlink(missing_ok=True)
    print("TorchServe stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.launcher", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start TorchServe in the background on the default localhost ports")
    start.add_argument("--store", default="model_store")
    start.add_argument("--run-dir", default=".run")
    start.add_argument("--timeout", type=float, default=300.0)
    start.add_argument("--host", default="127.0.0.1", help="bind address for inference, gRPC and metrics")
    start.add_argument("--foreground", action="store_true", help="wait for the server (containers)")
    start.set_defaults(func=_cli_start)
    stop = sub.add_parser("stop", help="stop the TorchServe started by `start`")
    stop.add_argument("--run-dir", default=".run")
    stop.set_defaults(func=_cli_stop)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
