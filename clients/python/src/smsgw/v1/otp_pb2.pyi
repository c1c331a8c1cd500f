import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VerificationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERIFICATION_STATUS_UNSPECIFIED: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_PENDING: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_APPROVED: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_EXPIRED: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_MAX_ATTEMPTS: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_CANCELED: _ClassVar[VerificationStatus]

class DeliveryStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_STATUS_UNSPECIFIED: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_QUEUED: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_SENDING: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_SENT: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_DELIVERED: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_FAILED: _ClassVar[DeliveryStatus]

class CheckResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECK_RESULT_UNSPECIFIED: _ClassVar[CheckResult]
    CHECK_RESULT_APPROVED: _ClassVar[CheckResult]
    CHECK_RESULT_DENIED: _ClassVar[CheckResult]
    CHECK_RESULT_EXPIRED: _ClassVar[CheckResult]
    CHECK_RESULT_MAX_ATTEMPTS: _ClassVar[CheckResult]
    CHECK_RESULT_CANCELED: _ClassVar[CheckResult]
VERIFICATION_STATUS_UNSPECIFIED: VerificationStatus
VERIFICATION_STATUS_PENDING: VerificationStatus
VERIFICATION_STATUS_APPROVED: VerificationStatus
VERIFICATION_STATUS_EXPIRED: VerificationStatus
VERIFICATION_STATUS_MAX_ATTEMPTS: VerificationStatus
VERIFICATION_STATUS_CANCELED: VerificationStatus
DELIVERY_STATUS_UNSPECIFIED: DeliveryStatus
DELIVERY_STATUS_QUEUED: DeliveryStatus
DELIVERY_STATUS_SENDING: DeliveryStatus
DELIVERY_STATUS_SENT: DeliveryStatus
DELIVERY_STATUS_DELIVERED: DeliveryStatus
DELIVERY_STATUS_FAILED: DeliveryStatus
CHECK_RESULT_UNSPECIFIED: CheckResult
CHECK_RESULT_APPROVED: CheckResult
CHECK_RESULT_DENIED: CheckResult
CHECK_RESULT_EXPIRED: CheckResult
CHECK_RESULT_MAX_ATTEMPTS: CheckResult
CHECK_RESULT_CANCELED: CheckResult

class Verification(_message.Message):
    __slots__ = ("id", "to", "status", "delivery_status", "message_id", "sends", "attempts", "attempts_left", "code_length", "expires_at", "created_at", "updated_at", "next_send_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SENDS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_LEFT_FIELD_NUMBER: _ClassVar[int]
    CODE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEND_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    to: str
    status: VerificationStatus
    delivery_status: DeliveryStatus
    message_id: str
    sends: int
    attempts: int
    attempts_left: int
    code_length: int
    expires_at: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    next_send_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., to: _Optional[str] = ..., status: _Optional[_Union[VerificationStatus, str]] = ..., delivery_status: _Optional[_Union[DeliveryStatus, str]] = ..., message_id: _Optional[str] = ..., sends: _Optional[int] = ..., attempts: _Optional[int] = ..., attempts_left: _Optional[int] = ..., code_length: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_send_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StartVerificationRequest(_message.Message):
    __slots__ = ("to", "template", "code_length", "ttl_seconds", "app_hash", "locale", "device_id", "sim_number", "idempotency_key")
    TO_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CODE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    APP_HASH_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SIM_NUMBER_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    to: str
    template: str
    code_length: int
    ttl_seconds: int
    app_hash: str
    locale: str
    device_id: str
    sim_number: int
    idempotency_key: str
    def __init__(self, to: _Optional[str] = ..., template: _Optional[str] = ..., code_length: _Optional[int] = ..., ttl_seconds: _Optional[int] = ..., app_hash: _Optional[str] = ..., locale: _Optional[str] = ..., device_id: _Optional[str] = ..., sim_number: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class CheckVerificationRequest(_message.Message):
    __slots__ = ("verification_id", "to", "code")
    VERIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    verification_id: str
    to: str
    code: str
    def __init__(self, verification_id: _Optional[str] = ..., to: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...

class CheckVerificationResponse(_message.Message):
    __slots__ = ("result", "attempts_left", "verification")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_LEFT_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    result: CheckResult
    attempts_left: int
    verification: Verification
    def __init__(self, result: _Optional[_Union[CheckResult, str]] = ..., attempts_left: _Optional[int] = ..., verification: _Optional[_Union[Verification, _Mapping]] = ...) -> None: ...

class CancelVerificationRequest(_message.Message):
    __slots__ = ("verification_id",)
    VERIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    verification_id: str
    def __init__(self, verification_id: _Optional[str] = ...) -> None: ...

class GetVerificationRequest(_message.Message):
    __slots__ = ("verification_id",)
    VERIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    verification_id: str
    def __init__(self, verification_id: _Optional[str] = ...) -> None: ...
