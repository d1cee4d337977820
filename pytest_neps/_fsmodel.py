"""A file-system model for crash states: inodes, names, and the operations between them.

:class:`Recorder` is a tracer for :func:`neps_state._io.set_tracer`: it turns every
change made below one root folder into an :class:`FsOp` on inode numbers of its
own (a live model resolves each path as the change happens), and keeps markers
that the workload inserts (an operation began, an operation was acknowledged).

:class:`Tree` is one state of the model, which :func:`persisted` builds from a
prefix of the trace and a choice of what a crash kept (see ``_crashstates``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

META_OPS = frozenset({"create", "mkdir", "rename", "exchange", "link", "unlink", "rmdir"})
"""Changes of names. A file system persists them in the order issued (a prefix)."""
DATA_OPS = frozenset({"write", "truncate"})
"""Changes of a file's bytes, persisted only when the file is fsynced (or by chance)."""


@dataclass(frozen=True)
class FsOp:
    """One traced change, a barrier (``fsync``), or a marker (``mark``).

    ``ino``: the file or folder it acts on (data ops, ``fsync``, ``fallocate``, the
    new inode of ``create``/``mkdir``). Names are (folder inode, name) pairs.
    """

    op: str
    ino: int = -1
    parent: int = -1
    name: str = ""
    parent2: int = -1
    name2: str = ""
    offset: int = 0
    data: bytes = b""
    size: int = 0
    label: str = ""
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_meta(self) -> bool:
        """Persisted in order with the other name changes (``fallocate`` too: it is journaled)."""
        return self.op in META_OPS or self.op == "fallocate"

    @property
    def is_data(self) -> bool:
        """Persisted with its file's data, all or nothing."""
        return self.op in DATA_OPS

    def folders(self) -> tuple[int, ...]:
        """The folders whose fsync makes this name change durable."""
        if self.op in ("rename", "exchange", "link"):
            return (self.parent, self.parent2)
        return (self.parent,)


@dataclass
class Node:
    """A file (``data``) or a folder (``entries``: name -> inode)."""

    kind: str
    data: bytearray = field(default_factory=bytearray)
    entries: dict[str, int] = field(default_factory=dict)


ROOT = 0


class Tree:
    """Inodes, and the names that reach them from the root folder (inode 0)."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {ROOT: Node("d")}

    def copy(self) -> Tree:
        """An independent copy."""
        out = Tree()
        out.nodes = {
            i: Node(n.kind, bytearray(n.data), dict(n.entries)) for i, n in self.nodes.items()
        }
        return out

    def apply(self, op: FsOp) -> None:
        """Apply one change (a name change whose source is gone is skipped)."""
        nodes = self.nodes
        if op.op in ("create", "mkdir"):
            nodes[op.ino] = Node("f" if op.op == "create" else "d")
            nodes[op.parent].entries[op.name] = op.ino
        elif op.op == "rename":
            moved = nodes[op.parent].entries.pop(op.name, None)
            if moved is not None:
                nodes[op.parent2].entries[op.name2] = moved
        elif op.op == "exchange":
            a, b = nodes[op.parent].entries, nodes[op.parent2].entries
            if op.name in a and op.name2 in b:
                a[op.name], b[op.name2] = b[op.name2], a[op.name]
        elif op.op == "link":
            target = nodes[op.parent].entries.get(op.name)
            if target is not None:
                nodes[op.parent2].entries[op.name2] = target
        elif op.op in ("unlink", "rmdir"):
            nodes[op.parent].entries.pop(op.name, None)
        elif op.op in ("write", "truncate", "fallocate"):
            self._apply_data(op)

    def _apply_data(self, op: FsOp) -> None:
        data = self.nodes[op.ino].data
        if op.op == "write":
            end = op.offset + len(op.data)
            if len(data) < op.offset:
                data.extend(bytes(op.offset - len(data)))
            data[op.offset : end] = op.data
        elif op.op == "truncate":
            del data[op.size :]
            data.extend(bytes(op.size - len(data)))
        elif len(data) < op.size:  # fallocate: the size grows, the new bytes read as zeros
            data.extend(bytes(op.size - len(data)))

    def walk(self, ino: int = ROOT, prefix: str = "") -> Iterator[tuple[str, Node]]:
        """Every (relative path, node) reachable from ``ino``, folders before their entries."""
        for name, child in sorted(self.nodes[ino].entries.items()):
            path = f"{prefix}{name}"
            node = self.nodes[child]
            yield path, node
            if node.kind == "d":
                yield from self.walk(child, path + "/")

    def digest(self) -> str:
        """A hash of what a reader would see (names, kinds and bytes)."""
        h = hashlib.sha256()
        for path, node in self.walk():
            h.update(f"{path}\0{node.kind}\0{len(node.data)}\0".encode())
            h.update(bytes(node.data))
        return h.hexdigest()

    def materialize(self, root: Path) -> None:
        """Write the reachable part of the tree below ``root`` (which must be empty)."""
        root.mkdir(parents=True, exist_ok=True)
        for path, node in self.walk():
            if node.kind == "d":
                (root / path).mkdir()
            else:
                (root / path).write_bytes(bytes(node.data))


class Recorder:
    """A tracer: records every change below ``root`` as an :class:`FsOp`, in order."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.initial = Tree()
        self.live = Tree()
        self.trace: list[FsOp] = []
        self._ids: dict[tuple[int, int], int] = {}
        self._next = 1
        st = os.stat(self.root)
        self._ids[(st.st_dev, st.st_ino)] = ROOT
        self._scan(self.root, ROOT)
        self.initial = self.live.copy()

    def _scan(self, path: Path, ino: int) -> None:
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            st = entry.stat(follow_symlinks=False)
            key = (st.st_dev, st.st_ino)
            if entry.is_dir(follow_symlinks=False):
                child = self._new(key)
                self.live.nodes[child] = Node("d")
                self._scan(Path(entry.path), child)
            elif entry.is_file(follow_symlinks=False):
                child = self._ids.get(key) or self._new(key)
                self.live.nodes[child] = Node("f", bytearray(Path(entry.path).read_bytes()))
            else:
                continue
            self.live.nodes[ino].entries[entry.name] = child

    def _new(self, key: tuple[int, int]) -> int:
        ino, self._next = self._next, self._next + 1
        self._ids[key] = ino  # a number reused by the system after a delete: a new inode
        return ino

    def mark(self, label: str, **info: Any) -> None:
        """Insert a marker (e.g. an operation's start or acknowledgement)."""
        self.trace.append(FsOp("mark", label=label, info=info))

    def _where(self, path: Path) -> tuple[int, str] | None:
        """(folder inode, name) of ``path`` in the live tree; None outside the root."""
        parts = Path(os.path.abspath(path)).parts
        root = self.root.parts
        if parts[: len(root)] != root or len(parts) == len(root):
            return None
        ino = ROOT
        for part in parts[len(root) : -1]:
            nxt = self.live.nodes[ino].entries.get(part)
            if nxt is None:
                return None
            ino = nxt
        return ino, parts[-1]

    def _fd_ino(self, fd: int) -> int | None:
        st = os.fstat(fd)
        return self._ids.get((st.st_dev, st.st_ino))

    def __call__(self, op: str, **args: Any) -> None:
        """The tracer protocol of ``neps_state._io``."""
        traced = self._resolve(op, args)
        if traced is not None:
            self.trace.append(traced)
            self.live.apply(traced)

    def _resolve(self, op: str, args: dict[str, Any]) -> FsOp | None:
        if "fd" in args:
            ino = self._fd_ino(args["fd"])
            if ino is None:
                return None
            return FsOp(
                op, ino=ino, offset=args.get("offset", 0), data=args.get("data", b""),
                size=args.get("size", 0),
            )  # fmt: skip
        if op in ("create", "mkdir", "unlink", "rmdir"):
            where = self._where(args["path"])
            if where is None:
                return None
            ino = -1
            if op in ("create", "mkdir"):
                st = os.lstat(args["path"])
                ino = self._new((st.st_dev, st.st_ino))
            return FsOp(op, ino=ino, parent=where[0], name=where[1])
        src, dst = self._where(args["src"]), self._where(args["dst"])
        if src is None or dst is None:
            return None
        return FsOp(op, parent=src[0], name=src[1], parent2=dst[0], name2=dst[1])
