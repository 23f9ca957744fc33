"""The serving layer: a batch of request rows (bytes + options) in, one ExplainResponse per row out.

No TorchServe import here either: ``handlers/cxrexplain_handler.py`` is the only module that knows TorchServe,
so the service runs in-process in tests and could be put behind another server.
"""
