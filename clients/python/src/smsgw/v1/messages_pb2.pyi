import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from smsgw.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TextMessage(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class DataMessage(_message.Message):
    __slots__ = ("data", "port")
    DATA_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    port: int
    def __init__(self, data: _Optional[bytes] = ..., port: _Optional[int] = ...) -> None: ...

class SendMessageRequest(_message.Message):
    __slots__ = ("phone_numbers", "text_message", "data_message", "device_id", "sim_number", "priority", "ttl", "valid_until", "with_delivery_report", "is_encrypted", "idempotency_key", "schedule_at")
    PHONE_NUMBERS_FIELD_NUMBER: _ClassVar[int]
    TEXT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SIM_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    WITH_DELIVERY_REPORT_FIELD_NUMBER: _ClassVar[int]
    IS_ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_AT_FIELD_NUMBER: _ClassVar[int]
    phone_numbers: _containers.RepeatedScalarFieldContainer[str]
    text_message: TextMessage
    data_message: DataMessage
    device_id: str
    sim_number: int
    priority: int
    ttl: int
    valid_until: _timestamp_pb2.Timestamp
    with_delivery_report: bool
    is_encrypted: bool
    idempotency_key: str
    schedule_at: _timestamp_pb2.Timestamp
    def __init__(self, phone_numbers: _Optional[_Iterable[str]] = ..., text_message: _Optional[_Union[TextMessage, _Mapping]] = ..., data_message: _Optional[_Union[DataMessage, _Mapping]] = ..., device_id: _Optional[str] = ..., sim_number: _Optional[int] = ..., priority: _Optional[int] = ..., ttl: _Optional[int] = ..., valid_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., with_delivery_report: _Optional[bool] = ..., is_encrypted: _Optional[bool] = ..., idempotency_key: _Optional[str] = ..., schedule_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SendMessagesRequest(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[SendMessageRequest]
    def __init__(self, messages: _Optional[_Iterable[_Union[SendMessageRequest, _Mapping]]] = ...) -> None: ...

class SendMessagesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SendMessageResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SendMessageResult, _Mapping]]] = ...) -> None: ...

class SendMessageResult(_message.Message):
    __slots__ = ("message", "error", "created")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    message: Message
    error: _status_pb2.Status
    created: bool
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class Recipient(_message.Message):
    __slots__ = ("phone_number", "state", "error", "updated_at", "attempt", "last_error", "next_attempt_at", "sim_number", "parts_total", "parts_sent", "parts_delivered")
    PHONE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    SIM_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PARTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PARTS_SENT_FIELD_NUMBER: _ClassVar[int]
    PARTS_DELIVERED_FIELD_NUMBER: _ClassVar[int]
    phone_number: str
    state: _common_pb2.State
    error: str
    updated_at: _timestamp_pb2.Timestamp
    attempt: int
    last_error: str
    next_attempt_at: _timestamp_pb2.Timestamp
    sim_number: int
    parts_total: int
    parts_sent: int
    parts_delivered: int
    def __init__(self, phone_number: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.State, str]] = ..., error: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt: _Optional[int] = ..., last_error: _Optional[str] = ..., next_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sim_number: _Optional[int] = ..., parts_total: _Optional[int] = ..., parts_sent: _Optional[int] = ..., parts_delivered: _Optional[int] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("id", "idempotency_key", "device_id", "sim_number", "text_message", "data_message", "is_encrypted", "priority", "valid_until", "with_delivery_report", "state", "recipients", "created_at", "updated_at", "parts", "encoding", "schedule_at", "attempts", "last_error", "next_attempt_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SIM_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TEXT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IS_ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    WITH_DELIVERY_REPORT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    idempotency_key: str
    device_id: str
    sim_number: int
    text_message: TextMessage
    data_message: DataMessage
    is_encrypted: bool
    priority: int
    valid_until: _timestamp_pb2.Timestamp
    with_delivery_report: bool
    state: _common_pb2.State
    recipients: _containers.RepeatedCompositeFieldContainer[Recipient]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    parts: int
    encoding: str
    schedule_at: _timestamp_pb2.Timestamp
    attempts: int
    last_error: str
    next_attempt_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., device_id: _Optional[str] = ..., sim_number: _Optional[int] = ..., text_message: _Optional[_Union[TextMessage, _Mapping]] = ..., data_message: _Optional[_Union[DataMessage, _Mapping]] = ..., is_encrypted: _Optional[bool] = ..., priority: _Optional[int] = ..., valid_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., with_delivery_report: _Optional[bool] = ..., state: _Optional[_Union[_common_pb2.State, str]] = ..., recipients: _Optional[_Iterable[_Union[Recipient, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., parts: _Optional[int] = ..., encoding: _Optional[str] = ..., schedule_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., next_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetMessageRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListMessagesRequest(_message.Message):
    __slots__ = ("state", "device_id", "created_after", "created_before", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.State
    device_id: str
    created_after: _timestamp_pb2.Timestamp
    created_before: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[_common_pb2.State, str]] = ..., device_id: _Optional[str] = ..., created_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMessagesResponse(_message.Message):
    __slots__ = ("messages", "next_page_token")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    next_page_token: str
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelMessageRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RescheduleMessageRequest(_message.Message):
    __slots__ = ("id", "schedule_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    schedule_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., schedule_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchMessagesRequest(_message.Message):
    __slots__ = ("after_event_id", "message_ids")
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    after_event_id: int
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, after_event_id: _Optional[int] = ..., message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class MessageEvent(_message.Message):
    __slots__ = ("event_id", "message_id", "recipient_index", "phone_number", "state", "message_state", "error", "time")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    PHONE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    message_id: str
    recipient_index: int
    phone_number: str
    state: _common_pb2.State
    message_state: _common_pb2.State
    error: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[int] = ..., message_id: _Optional[str] = ..., recipient_index: _Optional[int] = ..., phone_number: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.State, str]] = ..., message_state: _Optional[_Union[_common_pb2.State, str]] = ..., error: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExportMessagesRequest(_message.Message):
    __slots__ = ("state", "device_id", "created_after", "created_before")
    STATE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.State
    device_id: str
    created_after: _timestamp_pb2.Timestamp
    created_before: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[_Union[_common_pb2.State, str]] = ..., device_id: _Optional[str] = ..., created_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
