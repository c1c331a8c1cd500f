from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATE_UNSPECIFIED: _ClassVar[State]
    PENDING: _ClassVar[State]
    DISPATCHED: _ClassVar[State]
    ACCEPTED: _ClassVar[State]
    SENT: _ClassVar[State]
    DELIVERED: _ClassVar[State]
    FAILED: _ClassVar[State]
    EXPIRED: _ClassVar[State]
    CANCELLED: _ClassVar[State]
STATE_UNSPECIFIED: State
PENDING: State
DISPATCHED: State
ACCEPTED: State
SENT: State
DELIVERED: State
FAILED: State
EXPIRED: State
CANCELLED: State
