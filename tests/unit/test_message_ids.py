"""Message ids: unique within a process, across processes, and in a forked child."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from skipper.core.messages import Message, message_id

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def test_message_ids_are_32_hex_digits_and_never_repeat_in_a_process() -> None:
    ids = [Message(type="t").id for _ in range(10_000)]
    assert all(HEX32.match(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_another_process_and_a_forked_child_draw_other_ids() -> None:
    other = subprocess.run([sys.executable, "-c", "from skipper.core.messages import message_id; print(message_id())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then exit without running the parent's cleanup
        os.write(write, message_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    mine = message_id()
    assert HEX32.match(other) and HEX32.match(child)
    assert len({mine[:16], other[:16], child[:16]}) == 3  # three processes, three prefixes
