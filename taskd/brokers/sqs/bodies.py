"""Message bodies as SQS carries them.

SQS bodies are text of XML 1.0 characters. A body that is not UTF-8, or holds characters SQS
refuses, goes base64-encoded with the attribute ``taskd-base64``: only malformed messages do,
and they must still reach a worker to be set aside with their reason.
"""

from __future__ import annotations

import base64
import re
from typing import Any

BASE64_ATTRIBUTE = "taskd-base64"
_UNSENDABLE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def sendable(body: bytes) -> tuple[str, dict[str, Any]]:
    """The body as SQS can carry it, and the message attributes that say how."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not _UNSENDABLE.search(text):
        return text, {}
    encoded = base64.b64encode(body).decode("ascii")
    return encoded, {BASE64_ATTRIBUTE: {"DataType": "String", "StringValue": "1"}}


def body_of(message: dict[str, Any]) -> bytes:
    """The bytes that were sent, from a received message."""
    body: str = message["Body"]
    if BASE64_ATTRIBUTE in message.get("MessageAttributes", {}):
        return base64.b64decode(body)
    return body.encode("utf-8")
