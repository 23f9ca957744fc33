"""Check that Java 17+ is on PATH (TorchServe 0.12's frontend needs it) and say what to install if not."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

REQUIRED = 17
HINT = "install it with: apt-get update && apt-get install -y openjdk-17-jre-headless (or set JAVA_HOME)"


def java_version() -> int | None:
    """Major version of the ``java`` on PATH (or under JAVA_HOME), ``None`` when there is none."""
    java = shutil.which("java")
    if java is None:
        return None
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def main() -> int:
    version = java_version()
    if version is None:
        print(f"TorchServe needs Java {REQUIRED}, and no `java` was found: {HINT}", file=sys.stderr)
        return 1
    if version < REQUIRED:
        print(f"TorchServe needs Java {REQUIRED}, found Java {version}: {HINT}", file=sys.stderr)
        return 1
    print(f"Java {version}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
