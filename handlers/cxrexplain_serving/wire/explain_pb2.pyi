# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Finding(_message.Message):
    __slots__ = ("label", "probability", "operating_point", "positive")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    operating_point: float
    positive: bool
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ..., operating_point: _Optional[float] = ..., positive: _Optional[bool] = ...) -> None: ...

class Geometry(_message.Message):
    __slots__ = ("original_height", "original_width", "crop_top", "crop_left", "crop_size", "model_size")
    ORIGINAL_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_WIDTH_FIELD_NUMBER: _ClassVar[int]
    CROP_TOP_FIELD_NUMBER: _ClassVar[int]
    CROP_LEFT_FIELD_NUMBER: _ClassVar[int]
    CROP_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    original_height: int
    original_width: int
    crop_top: int
    crop_left: int
    crop_size: int
    model_size: int
    def __init__(self, original_height: _Optional[int] = ..., original_width: _Optional[int] = ..., crop_top: _Optional[int] = ..., crop_left: _Optional[int] = ..., crop_size: _Optional[int] = ..., model_size: _Optional[int] = ...) -> None: ...

class Map(_message.Message):
    __slots__ = ("height", "width", "dtype", "data")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    dtype: str
    data: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., dtype: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Heatmap(_message.Message):
    __slots__ = ("method", "target", "map")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    method: str
    target: str
    map: Map
    def __init__(self, method: _Optional[str] = ..., target: _Optional[str] = ..., map: _Optional[_Union[Map, _Mapping]] = ...) -> None: ...

class LatentShift(_message.Message):
    __slots__ = ("target", "lambdas", "frame_probabilities", "reconstruction_gap", "frames", "gif", "map_kind", "direction", "upper_bound_reached")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    LAMBDAS_FIELD_NUMBER: _ClassVar[int]
    FRAME_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_GAP_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    GIF_FIELD_NUMBER: _ClassVar[int]
    MAP_KIND_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    UPPER_BOUND_REACHED_FIELD_NUMBER: _ClassVar[int]
    target: str
    lambdas: _containers.RepeatedScalarFieldContainer[float]
    frame_probabilities: _containers.RepeatedScalarFieldContainer[float]
    reconstruction_gap: float
    frames: _containers.RepeatedCompositeFieldContainer[Map]
    gif: bytes
    map_kind: str
    direction: str
    upper_bound_reached: bool
    def __init__(self, target: _Optional[str] = ..., lambdas: _Optional[_Iterable[float]] = ..., frame_probabilities: _Optional[_Iterable[float]] = ..., reconstruction_gap: _Optional[float] = ..., frames: _Optional[_Iterable[_Union[Map, _Mapping]]] = ..., gif: _Optional[bytes] = ..., map_kind: _Optional[str] = ..., direction: _Optional[str] = ..., upper_bound_reached: _Optional[bool] = ...) -> None: ...

class Unit(_message.Message):
    __slots__ = ("unit", "score", "concept", "iou", "detector", "map")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CONCEPT_FIELD_NUMBER: _ClassVar[int]
    IOU_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    unit: int
    score: float
    concept: str
    iou: float
    detector: bool
    map: Map
    def __init__(self, unit: _Optional[int] = ..., score: _Optional[float] = ..., concept: _Optional[str] = ..., iou: _Optional[float] = ..., detector: _Optional[bool] = ..., map: _Optional[_Union[Map, _Mapping]] = ...) -> None: ...

class SemanticUnits(_message.Message):
    __slots__ = ("target", "layer", "units")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    target: str
    layer: str
    units: _containers.RepeatedCompositeFieldContainer[Unit]
    def __init__(self, target: _Optional[str] = ..., layer: _Optional[str] = ..., units: _Optional[_Iterable[_Union[Unit, _Mapping]]] = ...) -> None: ...

class InputSpec(_message.Message):
    __slots__ = ("channels", "size", "value_range", "mean", "std", "resize")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    VALUE_RANGE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    channels: int
    size: int
    value_range: _containers.RepeatedScalarFieldContainer[float]
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    resize: str
    def __init__(self, channels: _Optional[int] = ..., size: _Optional[int] = ..., value_range: _Optional[_Iterable[float]] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., resize: _Optional[str] = ...) -> None: ...

class ModelDescription(_message.Message):
    __slots__ = ("name", "version", "architecture", "labels", "operating_points", "input_spec", "methods", "has_autoencoder", "intended_use", "weights_sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SPEC_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    HAS_AUTOENCODER_FIELD_NUMBER: _ClassVar[int]
    INTENDED_USE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    architecture: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    operating_points: _containers.RepeatedScalarFieldContainer[float]
    input_spec: InputSpec
    methods: _containers.RepeatedScalarFieldContainer[str]
    has_autoencoder: bool
    intended_use: str
    weights_sha256: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., architecture: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., operating_points: _Optional[_Iterable[float]] = ..., input_spec: _Optional[_Union[InputSpec, _Mapping]] = ..., methods: _Optional[_Iterable[str]] = ..., has_autoencoder: _Optional[bool] = ..., intended_use: _Optional[str] = ..., weights_sha256: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "request_id", "type")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    request_id: str
    type: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., request_id: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("request_id", "model_name", "model_version", "not_for_diagnostic_use", "findings", "targets", "heatmaps", "latent_shifts", "geometry", "error", "description", "timings_ms", "part", "last", "reconstruction", "latent", "latent_shape", "semantic_units")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NOT_FOR_DIAGNOSTIC_USE_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    HEATMAPS_FIELD_NUMBER: _ClassVar[int]
    LATENT_SHIFTS_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    LATENT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_UNITS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_name: str
    model_version: str
    not_for_diagnostic_use: bool
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    targets: _containers.RepeatedScalarFieldContainer[str]
    heatmaps: _containers.RepeatedCompositeFieldContainer[Heatmap]
    latent_shifts: _containers.RepeatedCompositeFieldContainer[LatentShift]
    geometry: Geometry
    error: Error
    description: ModelDescription
    timings_ms: _containers.ScalarMap[str, float]
    part: str
    last: bool
    reconstruction: Map
    latent: Map
    latent_shape: _containers.RepeatedScalarFieldContainer[int]
    semantic_units: _containers.RepeatedCompositeFieldContainer[SemanticUnits]
    def __init__(self, request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., not_for_diagnostic_use: _Optional[bool] = ..., findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ..., targets: _Optional[_Iterable[str]] = ..., heatmaps: _Optional[_Iterable[_Union[Heatmap, _Mapping]]] = ..., latent_shifts: _Optional[_Iterable[_Union[LatentShift, _Mapping]]] = ..., geometry: _Optional[_Union[Geometry, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., description: _Optional[_Union[ModelDescription, _Mapping]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., part: _Optional[str] = ..., last: _Optional[bool] = ..., reconstruction: _Optional[_Union[Map, _Mapping]] = ..., latent: _Optional[_Union[Map, _Mapping]] = ..., latent_shape: _Optional[_Iterable[int]] = ..., semantic_units: _Optional[_Iterable[_Union[SemanticUnits, _Mapping]]] = ...) -> None: ...
