import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Sim(_message.Message):
    __slots__ = ("slot", "operator_name", "country_iso")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_NAME_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_ISO_FIELD_NUMBER: _ClassVar[int]
    slot: int
    operator_name: str
    country_iso: str
    def __init__(self, slot: _Optional[int] = ..., operator_name: _Optional[str] = ..., country_iso: _Optional[str] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("id", "name", "online", "last_seen", "sims", "app_version", "created_at", "pending", "connected_with_token", "wakeable", "last_woken_at", "push_token_invalid")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    SIMS_FIELD_NUMBER: _ClassVar[int]
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_WITH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WAKEABLE_FIELD_NUMBER: _ClassVar[int]
    LAST_WOKEN_AT_FIELD_NUMBER: _ClassVar[int]
    PUSH_TOKEN_INVALID_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    online: bool
    last_seen: _timestamp_pb2.Timestamp
    sims: _containers.RepeatedCompositeFieldContainer[Sim]
    app_version: str
    created_at: _timestamp_pb2.Timestamp
    pending: int
    connected_with_token: bool
    wakeable: bool
    last_woken_at: _timestamp_pb2.Timestamp
    push_token_invalid: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., online: _Optional[bool] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sims: _Optional[_Iterable[_Union[Sim, _Mapping]]] = ..., app_version: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pending: _Optional[int] = ..., connected_with_token: _Optional[bool] = ..., wakeable: _Optional[bool] = ..., last_woken_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., push_token_invalid: _Optional[bool] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class CreatePairingCodeRequest(_message.Message):
    __slots__ = ("device_name", "ttl_seconds")
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    device_name: str
    ttl_seconds: int
    def __init__(self, device_name: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class PairingCode(_message.Message):
    __slots__ = ("code", "expires_at", "device_url")
    CODE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_URL_FIELD_NUMBER: _ClassVar[int]
    code: str
    expires_at: _timestamp_pb2.Timestamp
    device_url: str
    def __init__(self, code: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., device_url: _Optional[str] = ...) -> None: ...

class DeleteDeviceRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteDeviceResponse(_message.Message):
    __slots__ = ("rerouted", "failed")
    REROUTED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    rerouted: int
    failed: int
    def __init__(self, rerouted: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...

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

class DeviceSettings(_message.Message):
    __slots__ = ("device_id", "default_pacing", "sims", "phone_parts_per_minute", "priority_bypass", "customized")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PACING_FIELD_NUMBER: _ClassVar[int]
    SIMS_FIELD_NUMBER: _ClassVar[int]
    PHONE_PARTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_BYPASS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMIZED_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    default_pacing: SimPacing
    sims: _containers.RepeatedCompositeFieldContainer[SimPacing]
    phone_parts_per_minute: int
    priority_bypass: bool
    customized: bool
    def __init__(self, device_id: _Optional[str] = ..., default_pacing: _Optional[_Union[SimPacing, _Mapping]] = ..., sims: _Optional[_Iterable[_Union[SimPacing, _Mapping]]] = ..., phone_parts_per_minute: _Optional[int] = ..., priority_bypass: _Optional[bool] = ..., customized: _Optional[bool] = ...) -> None: ...

class GetDeviceSettingsRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class UpdateDeviceSettingsRequest(_message.Message):
    __slots__ = ("settings", "reset")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    settings: DeviceSettings
    reset: bool
    def __init__(self, settings: _Optional[_Union[DeviceSettings, _Mapping]] = ..., reset: _Optional[bool] = ...) -> None: ...
