"""The supervisor reads children's slots while they write them: never a value half written."""

from __future__ import annotations

import os
import time

from taskd.worker.liveness import ChildLiveness

READ_FOR_S = 1.0  # long enough to read thousands of stamps in the middle of being written
WRITE_AT_MOST_S = 10.0  # the writer stops by itself if the reader never tells it to


def test_a_slot_written_in_another_process_never_reads_half_written() -> None:
    liveness = ChildLiveness(2)
    slot = 1  # not the first: its cells are not at the start of the table
    liveness.reset(slot)
    first_stamp, _busy = liveness.read(slot)
    stop_r, stop_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: stamps and counts as fast as it can, as a busy worker does
        try:
            os.set_blocking(stop_r, False)
            deadline = time.monotonic() + WRITE_AT_MOST_S
            while time.monotonic() < deadline:
                for busy in (True, False) * 50:
                    liveness.stamp(slot, busy=busy)
                    liveness.count_done(slot, failed=busy)
                try:
                    if os.read(stop_r, 1):
                        break
                except BlockingIOError:
                    pass
        finally:
            os._exit(0)
    reads, last_done, bad = 0, 0, []
    try:
        deadline = time.monotonic() + READ_FOR_S
        while time.monotonic() < deadline:
            for _ in range(1000):
                beat, _busy = liveness.read(slot)
                view = liveness.view(slot)
                reads += 1
                if beat < first_stamp or view.beat_s < first_stamp:
                    bad.append(f"a stamp read as {beat!r} / {view.beat_s!r}")
                if view.tasks_done < last_done:
                    bad.append(f"tasks done read as {view.tasks_done} after {last_done}")
                last_done = view.tasks_done
    finally:
        os.write(stop_w, b"x")
        os.waitpid(pid, 0)
        os.close(stop_r)
        os.close(stop_w)
    assert last_done > 0, "the writer never wrote"
    assert not bad, f"{len(bad)} of {reads} reads were half written, such as {bad[:3]}"
