"""Message bodies as SQS carries them, and sent in batches it takes.

SQS bodies are text of XML 1.0 characters. A body that is not UTF-8, or holds characters SQS
refuses, goes base64-encoded with the attribute ``taskd-base64``: only malformed messages do,
and they must still reach a worker to be set aside with their reason.

A SendMessageBatch carries at most BATCH (10) messages and a payload of at most BATCH_BYTES
(256 KiB, SQS's limit for years; AWS allows 1 MiB since 2025, other SQS services may not),
whatever the size of each message, which is the queue's own limit.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator
from typing import Any

from taskd.brokers.sqs.held import BATCH

BATCH_BYTES = 262_144
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


def send_batches(entries: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """SendMessageBatch entries in batches SQS takes: at most BATCH, together at most
    BATCH_BYTES; an entry larger than that goes alone (its queue's limit decides)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        length = payload_bytes(entry)
        if batch and (len(batch) == BATCH or size + length > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += length
    if batch:
        yield batch


def payload_bytes(entry: dict[str, Any]) -> int:
    """What SQS counts of a message: its body, and each attribute's name, type and value."""
    size = len(entry["MessageBody"].encode("utf-8"))
    for name, attribute in entry.get("MessageAttributes", {}).items():
        value = attribute.get("StringValue", "")
        size += len(name.encode("utf-8")) + len(attribute["DataType"]) + len(value.encode("utf-8"))
    return size
