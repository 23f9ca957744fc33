"""cxrexplain-client: findings and explanations (CAM, LRP, RAP, Latent Shift) from a cxrexplain server.

>>> from cxrexplain_client import ExplainClient                       # doctest: +SKIP
>>> with ExplainClient(token_file="key_file.json") as client:         # doctest: +SKIP
...     ex = client.explain("cxr.png", "densenet", methods=["cam", "rap"], targets="positive")

Not for diagnostic use.
"""

from ._retry import USE_CLIENT_DEFAULT, RetryPolicy
from .aio import AsyncExplainClient
from .auth import read_key_file
from .client import ExplainClient
from .errors import (
    CxrExplainClientError,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    OutputNotWritable,
    ServerUnavailable,
    Unauthorized,
)
from .results import (
    MAX_RECONSTRUCTION_GAP,
    Explanation,
    Finding,
    Geometry,
    Health,
    LatentShiftResult,
    ModelDescription,
    ModelInfo,
    SemanticResult,
    SemanticUnit,
    StreamPart,
    TargetResult,
)

__version__ = "0.1.0"

__all__ = [
    "MAX_RECONSTRUCTION_GAP",
    "USE_CLIENT_DEFAULT",
    "AsyncExplainClient",
    "CxrExplainClientError",
    "DeadlineExceeded",
    "ExplainClient",
    "Explanation",
    "Finding",
    "Geometry",
    "Health",
    "InvalidInput",
    "LatentShiftResult",
    "ModelDescription",
    "ModelInfo",
    "ModelNotFound",
    "OutputNotWritable",
    "RetryPolicy",
    "SemanticResult",
    "SemanticUnit",
    "ServerUnavailable",
    "StreamPart",
    "TargetResult",
    "Unauthorized",
    "read_key_file",
]
