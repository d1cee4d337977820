"""The remembered pid and the unique names stay right across fork."""

from __future__ import annotations

import json
import os

from neps_state._proc import pid, unique


def test_pid_and_names_are_renewed_in_a_forked_child() -> None:
    assert pid() == os.getpid()
    mine = {unique() for _ in range(1000)}
    assert len(mine) == 1000
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read)
        report = {"pid": pid(), "real": os.getpid(), "names": [unique() for _ in range(1000)]}
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 1 << 16):
        data += chunk
    os.close(read)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    report = json.loads(data)
    assert report["pid"] == report["real"] == child
    assert not mine & set(report["names"])
    assert pid() == os.getpid()
