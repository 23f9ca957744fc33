"""The wire payload: ``explain_pb2`` is generated from ``protos/explain.proto`` by ``protos/generate.py``
(the request options' schema, generated from ``protos/options.json``, is :mod:`cxrexplain.options_schema`).

Do not edit it by hand; regenerate it. REST answers with the message's JSON mapping (proto field
names) unless the request accepts :data:`PROTOBUF_MEDIA_TYPE`; gRPC carries the binary message.
"""

from . import explain_pb2

PROTOBUF_MEDIA_TYPE = "application/x-protobuf"
JSON_MEDIA_TYPE = "application/json"

__all__ = ["JSON_MEDIA_TYPE", "PROTOBUF_MEDIA_TYPE", "explain_pb2"]
