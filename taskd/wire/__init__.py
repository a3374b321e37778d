"""machinery's wire format: messages (Signature, Arg), stored states and group metadata.

Nothing here depends on the rest of taskd; Go producers and workers read what this writes.
"""

from taskd.wire.gotime import ZERO_TIME, GoTime
from taskd.wire.signature import Arg, Signature, decode_signature, new_id
from taskd.wire.state import (
    GroupMeta,
    State,
    TaskResult,
    TaskState,
    decode_group,
    decode_state,
)

__all__ = [
    "ZERO_TIME",
    "Arg",
    "GoTime",
    "GroupMeta",
    "Signature",
    "State",
    "TaskResult",
    "TaskState",
    "decode_group",
    "decode_signature",
    "decode_state",
    "new_id",
]
