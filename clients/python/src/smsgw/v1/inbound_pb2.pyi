import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from smsgw.v1 import messages_pb2 as _messages_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InboundMessage(_message.Message):
    __slots__ = ("id", "device_id", "sim_number", "sender", "text_message", "data_message", "is_encrypted", "received_at", "created_at", "truncated")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SIM_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    TEXT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IS_ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    id: str
    device_id: str
    sim_number: int
    sender: str
    text_message: _messages_pb2.TextMessage
    data_message: _messages_pb2.DataMessage
    is_encrypted: bool
    received_at: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    truncated: bool
    def __init__(self, id: _Optional[str] = ..., device_id: _Optional[str] = ..., sim_number: _Optional[int] = ..., sender: _Optional[str] = ..., text_message: _Optional[_Union[_messages_pb2.TextMessage, _Mapping]] = ..., data_message: _Optional[_Union[_messages_pb2.DataMessage, _Mapping]] = ..., is_encrypted: _Optional[bool] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ListInboundRequest(_message.Message):
    __slots__ = ("device_id", "received_after", "received_before", "page_size", "page_token")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AFTER_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    received_after: _timestamp_pb2.Timestamp
    received_before: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, device_id: _Optional[str] = ..., received_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., received_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListInboundResponse(_message.Message):
    __slots__ = ("messages", "next_page_token")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[InboundMessage]
    next_page_token: str
    def __init__(self, messages: _Optional[_Iterable[_Union[InboundMessage, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchInboundRequest(_message.Message):
    __slots__ = ("after_event_id", "device_id")
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    after_event_id: int
    device_id: str
    def __init__(self, after_event_id: _Optional[int] = ..., device_id: _Optional[str] = ...) -> None: ...

class InboundEvent(_message.Message):
    __slots__ = ("event_id", "message")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    message: InboundMessage
    def __init__(self, event_id: _Optional[int] = ..., message: _Optional[_Union[InboundMessage, _Mapping]] = ...) -> None: ...
