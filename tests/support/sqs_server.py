"""moto's SQS server for the tests, with receives made atomic as SQS's are.

moto's ``receive_message`` checks that a message is visible, then marks it received, with no
lock between: two long polls served by two of its threads at once can both take one message,
the second with ApproximateReceiveCount 2, while the first consumer still runs it. Real SQS
never hands a message to a second consumer within its visibility timeout. Under load that
race made a task's follow-ups run twice in the tests (its second copy, settled from the
first's stored result, sent them again). Here each receive looks at the queue under one lock,
without waiting; the long poll waits outside it, on moto's own wake-up.

``python -m tests.support.sqs_server -H 127.0.0.1 -p PORT`` takes moto.server's arguments.
Loopback only.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from moto import server
from moto.sqs.models import SQSBackend

_take = SQSBackend.receive_message
_taking = threading.Lock()


def receive_message(
    self: SQSBackend,
    queue_name: str,
    count: int,
    wait_seconds_timeout: int,
    visibility_timeout: int,
    message_attribute_names: list[str] | None = None,
) -> list[Any]:
    deadline = time.monotonic() + wait_seconds_timeout
    while True:
        with _taking:
            got = _take(self, queue_name, count, 0, visibility_timeout, message_attribute_names)
        left_s = deadline - time.monotonic()
        if got or left_s <= 0:
            return got
        self.get_queue(queue_name).wait_for_messages(min(left_s, 1))
        time.sleep(0.002)  # that wait ends at once while the queue holds only taken messages


SQSBackend.receive_message = receive_message  # type: ignore[method-assign]

if __name__ == "__main__":
    server.main()
