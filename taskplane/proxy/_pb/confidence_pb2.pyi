from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentRequest(_message.Message):
    __slots__ = ("task_id", "task_description", "data", "context", "timeout_ms", "pattern_name")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    PATTERN_NAME_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task_description: str
    data: _struct_pb2.Struct
    context: _containers.ScalarMap[str, str]
    timeout_ms: int
    pattern_name: str
    def __init__(self, task_id: _Optional[str] = ..., task_description: _Optional[str] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., context: _Optional[_Mapping[str, str]] = ..., timeout_ms: _Optional[int] = ..., pattern_name: _Optional[str] = ...) -> None: ...

class ConfidenceResult(_message.Message):
    __slots__ = ("value_json", "confidence", "agent_id", "timestamp", "uncertainties", "reasoning", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTIES_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    value_json: str
    confidence: float
    agent_id: str
    timestamp: _timestamp_pb2.Timestamp
    uncertainties: _containers.RepeatedScalarFieldContainer[str]
    reasoning: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, value_json: _Optional[str] = ..., confidence: _Optional[float] = ..., agent_id: _Optional[str] = ..., timestamp: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., uncertainties: _Optional[_Iterable[str]] = ..., reasoning: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Health(_message.Message):
    __slots__ = ("status", "message", "last_check", "details")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[Health.Status]
        HEALTHY: _ClassVar[Health.Status]
        UNHEALTHY: _ClassVar[Health.Status]
        DEGRADED: _ClassVar[Health.Status]
    UNKNOWN: Health.Status
    HEALTHY: Health.Status
    UNHEALTHY: Health.Status
    DEGRADED: Health.Status
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECK_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    status: Health.Status
    message: str
    last_check: _timestamp_pb2.Timestamp
    details: _containers.ScalarMap[str, str]
    def __init__(self, status: _Optional[_Union[Health.Status, str]] = ..., message: _Optional[str] = ..., last_check: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("agent_id", "name", "capabilities", "expertise_level", "capability_scores")
    class CapabilityScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    EXPERTISE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_SCORES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    name: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    expertise_level: float
    capability_scores: _containers.ScalarMap[str, float]
    def __init__(self, agent_id: _Optional[str] = ..., name: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., expertise_level: _Optional[float] = ..., capability_scores: _Optional[_Mapping[str, float]] = ...) -> None: ...
