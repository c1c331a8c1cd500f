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

class FailureClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_CLASS_UNSPECIFIED: _ClassVar[FailureClass]
    GENERIC_FAILURE: _ClassVar[FailureClass]
    LIMIT_EXCEEDED: _ClassVar[FailureClass]
    NO_SERVICE: _ClassVar[FailureClass]
    RADIO_OFF: _ClassVar[FailureClass]
    INVALID_NUMBER: _ClassVar[FailureClass]
    BLOCKED: _ClassVar[FailureClass]
    DECRYPT_FAILED: _ClassVar[FailureClass]

class ReceiptState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECEIPT_STATE_UNSPECIFIED: _ClassVar[ReceiptState]
    ACCEPTED: _ClassVar[ReceiptState]
    SENT: _ClassVar[ReceiptState]
    DELIVERED: _ClassVar[ReceiptState]
    FAILED: _ClassVar[ReceiptState]

class RejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECT_REASON_UNSPECIFIED: _ClassVar[RejectReason]
    INVALID_EVENT: _ClassVar[RejectReason]
    UNKNOWN_MESSAGE: _ClassVar[RejectReason]
    UNKNOWN_RECIPIENT: _ClassVar[RejectReason]
CLOSE_CODE_UNSPECIFIED: CloseCode
BAD_FRAME: CloseCode
PROTOCOL_VIOLATION: CloseCode
WINDOW_EXCEEDED: CloseCode
REPLACED: CloseCode
CREDENTIALS_REVOKED: CloseCode
HELLO_TIMEOUT: CloseCode
UNSUPPORTED_SUBPROTOCOL: CloseCode
FAILURE_CLASS_UNSPECIFIED: FailureClass
GENERIC_FAILURE: FailureClass
LIMIT_EXCEEDED: FailureClass
NO_SERVICE: FailureClass
RADIO_OFF: FailureClass
INVALID_NUMBER: FailureClass
BLOCKED: FailureClass
DECRYPT_FAILED: FailureClass
RECEIPT_STATE_UNSPECIFIED: ReceiptState
ACCEPTED: ReceiptState
SENT: ReceiptState
DELIVERED: ReceiptState
FAILED: ReceiptState
REJECT_REASON_UNSPECIFIED: RejectReason
INVALID_EVENT: RejectReason
UNKNOWN_MESSAGE: RejectReason
UNKNOWN_RECIPIENT: RejectReason

class DeviceFrame(_message.Message):
    __slots__ = ("hello", "receipt", "inbound", "push_token")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    INBOUND_FIELD_NUMBER: _ClassVar[int]
    PUSH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    receipt: Receipt
    inbound: Inbound
    push_token: PushToken
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., receipt: _Optional[_Union[Receipt, _Mapping]] = ..., inbound: _Optional[_Union[Inbound, _Mapping]] = ..., push_token: _Optional[_Union[PushToken, _Mapping]] = ...) -> None: ...

class BridgeFrame(_message.Message):
    __slots__ = ("welcome", "deliver", "ack", "drop", "settings", "reject")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    DELIVER_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    deliver: Deliver
    ack: Ack
    drop: Drop
    settings: Settings
    reject: Reject
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., deliver: _Optional[_Union[Deliver, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., drop: _Optional[_Union[Drop, _Mapping]] = ..., settings: _Optional[_Union[Settings, _Mapping]] = ..., reject: _Optional[_Union[Reject, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("app_version", "sims", "window", "held_message_ids", "held", "push_token")
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    SIMS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    HELD_MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    PUSH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    app_version: str
    sims: _containers.RepeatedCompositeFieldContainer[Sim]
    window: int
    held_message_ids: _containers.RepeatedScalarFieldContainer[str]
    held: _containers.RepeatedCompositeFieldContainer[HeldRecipient]
    push_token: str
    def __init__(self, app_version: _Optional[str] = ..., sims: _Optional[_Iterable[_Union[Sim, _Mapping]]] = ..., window: _Optional[int] = ..., held_message_ids: _Optional[_Iterable[str]] = ..., held: _Optional[_Iterable[_Union[HeldRecipient, _Mapping]]] = ..., push_token: _Optional[str] = ...) -> None: ...

class PushToken(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class HeldRecipient(_message.Message):
    __slots__ = ("message_id", "recipient_index", "attempt")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    recipient_index: int
    attempt: int
    def __init__(self, message_id: _Optional[str] = ..., recipient_index: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class Credentials(_message.Message):
    __slots__ = ("device_id", "token")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    token: str
    def __init__(self, device_id: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("device_id", "server_time", "window", "ping_interval_seconds", "credentials", "settings")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    PING_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    server_time: _timestamp_pb2.Timestamp
    window: int
    ping_interval_seconds: int
    credentials: Credentials
    settings: Settings
    def __init__(self, device_id: _Optional[str] = ..., server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window: _Optional[int] = ..., ping_interval_seconds: _Optional[int] = ..., credentials: _Optional[_Union[Credentials, _Mapping]] = ..., settings: _Optional[_Union[Settings, _Mapping]] = ...) -> None: ...

class SimPacing(_message.Message):
    __slots__ = ("slot", "parts_per_minute", "min_interval_ms", "parts_per_hour", "parts_per_day", "recipients_per_month")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    PARTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    MIN_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    PARTS_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    PARTS_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_PER_MONTH_FIELD_NUMBER: _ClassVar[int]
    slot: int
    parts_per_minute: int
    min_interval_ms: int
    parts_per_hour: int
    parts_per_day: int
    recipients_per_month: int
    def __init__(self, slot: _Optional[int] = ..., parts_per_minute: _Optional[int] = ..., min_interval_ms: _Optional[int] = ..., parts_per_hour: _Optional[int] = ..., parts_per_day: _Optional[int] = ..., recipients_per_month: _Optional[int] = ...) -> None: ...

class Settings(_message.Message):
    __slots__ = ("sims", "phone_parts_per_minute", "priority_bypass")
    SIMS_FIELD_NUMBER: _ClassVar[int]
    PHONE_PARTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_BYPASS_FIELD_NUMBER: _ClassVar[int]
    sims: _containers.RepeatedCompositeFieldContainer[SimPacing]
    phone_parts_per_minute: int
    priority_bypass: bool
    def __init__(self, sims: _Optional[_Iterable[_Union[SimPacing, _Mapping]]] = ..., phone_parts_per_minute: _Optional[int] = ..., priority_bypass: _Optional[bool] = ...) -> None: ...

class Data(_message.Message):
    __slots__ = ("data", "port")
    DATA_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    port: int
    def __init__(self, data: _Optional[bytes] = ..., port: _Optional[int] = ...) -> None: ...

class Deliver(_message.Message):
    __slots__ = ("message_id", "phone_numbers", "text", "data", "sim_number", "is_encrypted", "with_delivery_report", "priority", "valid_until", "recipient_indices", "attempt", "parts")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PHONE_NUMBERS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIM_NUMBER_FIELD_NUMBER: _ClassVar[int]
    IS_ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    WITH_DELIVERY_REPORT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_INDICES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    phone_numbers: _containers.RepeatedScalarFieldContainer[str]
    text: str
    data: Data
    sim_number: int
    is_encrypted: bool
    with_delivery_report: bool
    priority: int
    valid_until: _timestamp_pb2.Timestamp
    recipient_indices: _containers.RepeatedScalarFieldContainer[int]
    attempt: int
    parts: int
    def __init__(self, message_id: _Optional[str] = ..., phone_numbers: _Optional[_Iterable[str]] = ..., text: _Optional[str] = ..., data: _Optional[_Union[Data, _Mapping]] = ..., sim_number: _Optional[int] = ..., is_encrypted: _Optional[bool] = ..., with_delivery_report: _Optional[bool] = ..., priority: _Optional[int] = ..., valid_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recipient_indices: _Optional[_Iterable[int]] = ..., attempt: _Optional[int] = ..., parts: _Optional[int] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("event_id", "message_id", "state", "recipient_index", "error", "time", "recipient_indices", "attempt", "failure_class", "parts_done")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_INDICES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CLASS_FIELD_NUMBER: _ClassVar[int]
    PARTS_DONE_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    message_id: str
    state: ReceiptState
    recipient_index: int
    error: str
    time: _timestamp_pb2.Timestamp
    recipient_indices: _containers.RepeatedScalarFieldContainer[int]
    attempt: int
    failure_class: FailureClass
    parts_done: int
    def __init__(self, event_id: _Optional[int] = ..., message_id: _Optional[str] = ..., state: _Optional[_Union[ReceiptState, str]] = ..., recipient_index: _Optional[int] = ..., error: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recipient_indices: _Optional[_Iterable[int]] = ..., attempt: _Optional[int] = ..., failure_class: _Optional[_Union[FailureClass, str]] = ..., parts_done: _Optional[int] = ...) -> None: ...

class Inbound(_message.Message):
    __slots__ = ("event_id", "id", "sim_number", "sender", "text", "data", "received_at", "is_encrypted", "truncated")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SIM_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    IS_ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    id: str
    sim_number: int
    sender: str
    text: str
    data: Data
    received_at: _timestamp_pb2.Timestamp
    is_encrypted: bool
    truncated: bool
    def __init__(self, event_id: _Optional[int] = ..., id: _Optional[str] = ..., sim_number: _Optional[int] = ..., sender: _Optional[str] = ..., text: _Optional[str] = ..., data: _Optional[_Union[Data, _Mapping]] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., is_encrypted: _Optional[bool] = ..., truncated: _Optional[bool] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("event_ids",)
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    event_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, event_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Reject(_message.Message):
    __slots__ = ("event_id", "reason", "detail")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    reason: RejectReason
    detail: str
    def __init__(self, event_id: _Optional[int] = ..., reason: _Optional[_Union[RejectReason, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class Drop(_message.Message):
    __slots__ = ("message_id", "reason")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    reason: str
    def __init__(self, message_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
