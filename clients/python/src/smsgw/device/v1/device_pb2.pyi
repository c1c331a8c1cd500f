import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CloseCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLOSE_CODE_UNSPECIFIED: _ClassVar[CloseCode]
    BAD_FRAME: _ClassVar[CloseCode]
    PROTOCOL_VIOLATION: _ClassVar[CloseCode]
    WINDOW_EXCEEDED: _ClassVar[CloseCode]
    REPLACED: _ClassVar[CloseCode]
    CREDENTIALS_REVOKED: _ClassVar[CloseCode]
    HELLO_TIMEOUT: _ClassVar[CloseCode]
    UNSUPPORTED_SUBPROTOCOL: _ClassVar[CloseCode]

class ReceiptState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECEIPT_STATE_UNSPECIFIED: _ClassVar[ReceiptState]
    ACCEPTED: _ClassVar[ReceiptState]
    SENT: _ClassVar[ReceiptState]
    DELIVERED: _ClassVar[ReceiptState]
    FAILED: _ClassVar[ReceiptState]
CLOSE_CODE_UNSPECIFIED: CloseCode
BAD_FRAME: CloseCode
PROTOCOL_VIOLATION: CloseCode
WINDOW_EXCEEDED: CloseCode
REPLACED: CloseCode
CREDENTIALS_REVOKED: CloseCode
HELLO_TIMEOUT: CloseCode
UNSUPPORTED_SUBPROTOCOL: CloseCode
RECEIPT_STATE_UNSPECIFIED: ReceiptState
ACCEPTED: ReceiptState
SENT: ReceiptState
DELIVERED: ReceiptState
FAILED: ReceiptState

class DeviceFrame(_message.Message):
    __slots__ = ("hello", "receipt")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    receipt: Receipt
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., receipt: _Optional[_Union[Receipt, _Mapping]] = ...) -> None: ...

class BridgeFrame(_message.Message):
    __slots__ = ("welcome", "deliver", "ack", "drop")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    DELIVER_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    deliver: Deliver
    ack: Ack
    drop: Drop
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., deliver: _Optional[_Union[Deliver, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., drop: _Optional[_Union[Drop, _Mapping]] = ...) -> None: ...

class Sim(_message.Message):
    __slots__ = ("slot", "operator_name", "country_iso")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_NAME_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_ISO_FIELD_NUMBER: _ClassVar[int]
    slot: int
    operator_name: str
    country_iso: str
    def __init__(self, slot: _Optional[int] = ..., operator_name: _Optional[str] = ..., country_iso: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("app_version", "sims", "window", "held_message_ids")
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    SIMS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    HELD_MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    app_version: str
    sims: _containers.RepeatedCompositeFieldContainer[Sim]
    window: int
    held_message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, app_version: _Optional[str] = ..., sims: _Optional[_Iterable[_Union[Sim, _Mapping]]] = ..., window: _Optional[int] = ..., held_message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Credentials(_message.Message):
    __slots__ = ("device_id", "token")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    token: str
    def __init__(self, device_id: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("device_id", "server_time", "window", "ping_interval_seconds", "credentials")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    PING_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    server_time: _timestamp_pb2.Timestamp
    window: int
    ping_interval_seconds: int
    credentials: Credentials
    def __init__(self, device_id: _Optional[str] = ..., server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window: _Optional[int] = ..., ping_interval_seconds: _Optional[int] = ..., credentials: _Optional[_Union[Credentials, _Mapping]] = ...) -> None: ...

class Data(_message.Message):
    __slots__ = ("data", "port")
    DATA_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    port: int
    def __init__(self, data: _Optional[bytes] = ..., port: _Optional[int] = ...) -> None: ...

class Deliver(_message.Message):
    __slots__ = ("message_id", "phone_numbers", "text", "data", "sim_number", "is_encrypted", "with_delivery_report", "priority", "valid_until")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PHONE_NUMBERS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIM_NUMBER_FIELD_NUMBER: _ClassVar[int]
    IS_ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    WITH_DELIVERY_REPORT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    phone_numbers: _containers.RepeatedScalarFieldContainer[str]
    text: str
    data: Data
    sim_number: int
    is_encrypted: bool
    with_delivery_report: bool
    priority: int
    valid_until: _timestamp_pb2.Timestamp
    def __init__(self, message_id: _Optional[str] = ..., phone_numbers: _Optional[_Iterable[str]] = ..., text: _Optional[str] = ..., data: _Optional[_Union[Data, _Mapping]] = ..., sim_number: _Optional[int] = ..., is_encrypted: _Optional[bool] = ..., with_delivery_report: _Optional[bool] = ..., priority: _Optional[int] = ..., valid_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("event_id", "message_id", "state", "recipient_index", "error", "time")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    message_id: str
    state: ReceiptState
    recipient_index: int
    error: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[int] = ..., message_id: _Optional[str] = ..., state: _Optional[_Union[ReceiptState, str]] = ..., recipient_index: _Optional[int] = ..., error: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("event_ids",)
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    event_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, event_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Drop(_message.Message):
    __slots__ = ("message_id", "reason")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    reason: str
    def __init__(self, message_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
