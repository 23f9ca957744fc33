"""Bearer tokens: given directly, read from TorchServe's ``key_file.json``, or from ``CXREXPLAIN_TOKEN``.

TorchServe 0.12 writes ``key_file.json`` as ``{"management": {"key", "expiration time"}, "inference": {...},
"API": {"key"}}``. Inference calls (and ``/ping``) take the inference key; management calls the
management key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from .errors import Unauthorized

TOKEN_ENV = "CXREXPLAIN_TOKEN"
MANAGEMENT_TOKEN_ENV = "CXREXPLAIN_MANAGEMENT_TOKEN"

KeyKind = Literal["inference", "management"]


def read_key_file(path: str | os.PathLike[str], kind: KeyKind = "inference") -> str:
    """Read one key from a TorchServe ``key_file.json``.

    Parameters
    ----------
    path
        The key file (written to TorchServe's working directory at start).
    kind
        ``"inference"`` or ``"management"``.

    Returns
    -------
    str
        The key, to be sent as ``Authorization: Bearer <key>``.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        key = doc[kind]["key"]
    except FileNotFoundError as exc:
        raise Unauthorized(
            f"token file {p} does not exist; TorchServe writes key_file.json where it starts"
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise Unauthorized(
            f"token file {p} is not a TorchServe key_file.json with a '{kind}' key; pass --token instead"
        ) from exc
    if not isinstance(key, str) or not key:
        raise Unauthorized(f"token file {p} has an empty '{kind}' key")
    return key


def resolve_token(
    token: str | None = None, token_file: str | os.PathLike[str] | None = None, kind: KeyKind = "inference"
) -> str | None:
    """The token to use: ``token`` if given, else from ``token_file``, else the environment, else ``None``."""
    if token:
        return token
    if token_file:
        return read_key_file(token_file, kind)
    env = os.environ.get(MANAGEMENT_TOKEN_ENV if kind == "management" else TOKEN_ENV)
    if not env and kind == "management":
        env = os.environ.get(TOKEN_ENV)
    return env or None
