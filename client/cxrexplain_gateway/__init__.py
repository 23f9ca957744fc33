"""cxrexplain-gateway: a DICOM node between a PACS and the cxrexplain service (not for diagnostic use).

It accepts chest X-rays (CR, DX) by C-STORE, writes each to disk before answering, explains it through the SDK
(:class:`cxrexplain_client.ExplainClient`, whose retries and token re-reading it relies on), builds the DICOM
results (:mod:`cxrexplain_dicom`) and sends them by C-STORE or STOW-RS. Run it with ``cxrexplain-gateway
--config gateway.yaml`` (docs/gateway.md). No torch and nothing of the server; needs the client's ``gateway``
extra.

- :mod:`.config`: the YAML contract, checked; :mod:`.store`: received instances and their state on disk;
- :mod:`.node`: the pynetdicom AE; :mod:`.worker`: the bounded pool and its retries; :mod:`.send`: C-STORE and
  STOW-RS destinations; :mod:`.metrics`: Prometheus; :mod:`.gateway`: all of them together; :mod:`.cli`.
"""

from .config import ConfigError, GatewayConfig, load_config, parse_config
from .gateway import Gateway
from .send import SendError
from .store import InstanceStore, Record

__all__ = ["ConfigError", "Gateway", "GatewayConfig", "InstanceStore", "Record", "SendError", "load_config",
           "parse_config"]
