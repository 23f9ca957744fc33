"""The serving layer: a batch of request rows (bytes + options) in, one ExplainResponse per row out.

No TorchServe import here either: ``handlers/cxrexplain_handler.py`` is the only module that knows TorchServe,
so the service runs in-process in tests and could be put behind another server.

Read :mod:`.service` first: it runs a batch through its stages, each in a module of its own:

- :mod:`.rows`: a request row, its state between stages, per-row failure (``with row.step():``);
- :mod:`.prepare`: options -> methods (built once) -> decoded image -> model input;
- :mod:`.predictor`: the predictions-only backend (ONNX Runtime);
- :mod:`.targets`: which findings to explain (``None``: the top finding, read by the explanation's forward);
- :mod:`.caps`: the cost caps, what a request costs, how large its answer gets;
- :mod:`.batching`: rows sharing one engine call;
- :mod:`.responses`: answers whole or streamed, their encoding, and the pictures in them;
- :mod:`.capabilities`: the methods this model can run, its model card;
- :mod:`.options`, :mod:`.telemetry`, :mod:`.config`: request options, metrics and logs, ``serve.json``;
- :mod:`.autoencoder_service`: the autoencoder archive's encode / decode / reconstruct.
"""
