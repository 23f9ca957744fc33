"""Container health check: TorchServe's /ping with the current inference key (0.12 asks a token for /ping)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.healthcheck")
    parser.add_argument("--run-dir", default=".run")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    args = parser.parse_args(argv)
    try:
        key = json.loads((Path(args.run_dir) / "key_file.json").read_text())["inference"]["key"]
        response = httpx.get(f"{args.url}/ping", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    except (OSError, KeyError, ValueError, httpx.HTTPError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    healthy = response.is_success and response.json().get("status") == "Healthy"
    print(response.text.strip())
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
