"""The data folder under review: checked paths and class names, and file moves written ahead to a journal.

Every change ``convnets review`` makes to DATA is a *step* appended to ``DATA/.review-journal.jsonl``
(one JSON object per line, flushed and fsynced) **before** the file system is touched, and marked
``done`` after it: a move (relabel, set aside), or a directory it had to create. Nothing is ever
deleted: a file set aside goes to ``DATA/.quarantine/<its path in DATA>`` (a hidden folder, so the data
layer, ``train`` and ``doctor`` skip it), and undoing a step is a new step that moves the file back
(and removes a directory only if this review created it and it is empty again).

A crash between the journal line and the move loses nothing: :meth:`Journal.recover` (run whenever a
journal is opened) finishes each step that has no ``done`` line, by what the folder shows: the source
still there and the destination free -> the move is made; already at its destination -> only marked.
Undoing everything (``convnets review DATA --undo``) then restores every file and folder of DATA as it
was before the review; the journal itself stays as the record of what happened.

Paths and class names that come from the page are checked here (:meth:`DataFolder.file`,
:func:`check_class_name`): relative POSIX paths only, no ``..``/``.``/empty parts, no NUL, no hidden
parts (the journal, the quarantine unless asked for), no symlink anywhere on the way, regular image
files only, and the resolved path must lie inside DATA.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..data.decode import is_image_file
from ..data.folder import PRESPLIT_NAMES, find_presplit

__all__ = [
    "JOURNAL_FILE",
    "QUARANTINE_DIR",
    "DataFolder",
    "Journal",
    "Move",
    "ReviewError",
    "check_class_name",
]

JOURNAL_FILE = ".review-journal.jsonl"
QUARANTINE_DIR = ".quarantine"
MAX_PATH_CHARS = 4096
MAX_NAME_CHARS = 255


class ReviewError(ValueError):
    """A request the review refuses (a bad path or class name, a missing file): one line, names it."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_class_name(name: Any) -> str:
    """A class name that is one visible folder name: not empty, '.', '..', hidden, no '/', '\\' or NUL."""
    if not isinstance(name, str):
        raise ReviewError("class name must be a string")
    if name != name.strip() or not name:
        raise ReviewError(f"class name {name!r}: empty or with leading/trailing spaces")
    if name in (".", "..") or name.startswith("."):
        raise ReviewError(f"class name {name!r}: '.', '..' and hidden names are not class folders")
    if any(c in name for c in "/\\\0") or any(ord(c) < 32 for c in name):
        raise ReviewError(f"class name {name!r}: no '/', '\\\\', NUL or control characters")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_CHARS:
        raise ReviewError(f"class name {name[:20]!r}...: longer than {MAX_NAME_CHARS} bytes")
    return name


@dataclass(frozen=True)
class Move:
    src: str  # paths relative to DATA, POSIX
    dst: str

    def to_dict(self) -> dict[str, str]:
        return {"src": self.src, "dst": self.dst}


class DataFolder:
    """DATA and the rules for paths in it (plain class folders, or a root with train/ and val/ or test/)."""

    def __init__(self, root: str | os.PathLike) -> None:
        path = Path(root)
        if not path.is_dir():
            raise ReviewError(f"{root}: not a folder")
        self.root = path.resolve()
        presplit = find_presplit(self.root)
        # Pre-split: a file's class is the folder under its split (train/cat/x.jpg), so relabelling
        # keeps it in its split.
        self.split_dirs = sorted(p.name for p in presplit.values() if p is not None) if presplit else []

    @property
    def quarantine(self) -> Path:
        return self.root / QUARANTINE_DIR

    def rel(self, path: str | os.PathLike) -> str | None:
        """``path`` (absolute or relative to the working directory) relative to DATA, or None outside it."""
        try:
            return Path(os.path.abspath(path)).resolve().relative_to(self.root).as_posix()
        except (ValueError, OSError):
            return None

    def _parts(self, rel: Any, quarantine: bool) -> tuple[str, ...]:
        if not isinstance(rel, str) or not rel:
            raise ReviewError("path must be a non-empty string relative to DATA")
        if len(rel) > MAX_PATH_CHARS or "\0" in rel or "\\" in rel:
            raise ReviewError(f"path {rel[:80]!r}: too long, or with NUL or backslash")
        if rel.startswith("/") or PurePosixPath(rel).is_absolute():
            raise ReviewError(f"path {rel!r}: absolute paths are refused; give it relative to DATA")
        parts = tuple(rel.split("/"))
        if any(p in ("", ".", "..") for p in parts):
            raise ReviewError(f"path {rel!r}: empty, '.' and '..' parts are refused")
        hidden = [p for p in parts if p.startswith(".")]
        if hidden and not (quarantine and parts[0] == QUARANTINE_DIR and hidden == [QUARANTINE_DIR]):
            raise ReviewError(f"path {rel!r}: hidden files and folders are not part of the data")
        return parts

    def file(self, rel: Any, *, quarantine: bool = False) -> Path:
        """The image file ``rel`` names inside DATA (in the quarantine too with ``quarantine=True``).

        Refuses (``ReviewError``) anything that is not a regular image file reached without a
        symlink from DATA: ``..``, absolute paths, links, folders, hidden files, the journal."""
        parts = self._parts(rel, quarantine)
        path = self.root.joinpath(*parts)
        here = self.root
        for part in parts:
            here = here / part
            try:
                st = os.lstat(here)
            except FileNotFoundError:
                raise ReviewError(f"{rel}: no such file in DATA", 404) from None
            except OSError as e:
                raise ReviewError(f"{rel}: {e.strerror}", 404) from None
            if stat.S_ISLNK(st.st_mode):
                raise ReviewError(f"{rel}: symbolic links are refused")
        if not stat.S_ISREG(st.st_mode):
            raise ReviewError(f"{rel}: not a regular file")
        if not is_image_file(path.name):
            raise ReviewError(f"{rel}: not an image file (by its extension)")
        if self.root not in path.resolve().parents:  # belt and braces: nothing above can lead out
            raise ReviewError(f"{rel}: outside DATA")
        return path

    def class_of(self, rel: str) -> tuple[str, str]:
        """(the split folder prefix, '' or 'train/'; the class) of a file path relative to DATA."""
        parts = rel.split("/")
        if self.split_dirs and parts[0] in self.split_dirs and len(parts) >= 3:
            return parts[0] + "/", parts[1]
        if len(parts) < 2:
            raise ReviewError(f"{rel}: not inside a class folder")
        return "", parts[0]

    def classes(self) -> list[str]:
        """The visible class folders (of train/ when pre-split): the choices the page offers."""
        base = self.root / self.split_dirs[0] if self.split_dirs else self.root
        if self.split_dirs:
            train = [d for d in self.split_dirs if d.lower() in PRESPLIT_NAMES["train"]]
            base = self.root / (train[0] if train else self.split_dirs[0])
        return sorted(
            p.name for p in base.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
        )

    def free_name(self, rel_dir: str, name: str) -> str:
        """``rel_dir/name``, or ``rel_dir/stem (2).ext``... when taken: a move never overwrites."""
        stem, suffix = os.path.splitext(name)
        candidate, n = name, 1
        while (self.root / rel_dir / candidate).exists() or (self.root / rel_dir / candidate).is_symlink():
            n += 1
            candidate = f"{stem} ({n}){suffix}"
        return f"{rel_dir}/{candidate}" if rel_dir else candidate

    def check_dir_inside(self, rel_dir: str) -> None:
        """Each existing part of ``rel_dir`` is a real folder (no symlink) inside DATA."""
        here = self.root
        for part in rel_dir.split("/"):
            here = here / part
            if here.is_symlink():
                raise ReviewError(f"{rel_dir}: a symbolic link on the way is refused")
            if here.exists() and not here.is_dir():
                raise ReviewError(f"{rel_dir}: {part} is a file, not a folder")


def _move(src: Path, dst: Path) -> None:
    """The one place a file is moved (same file system: DATA and its quarantine)."""
    os.rename(src, dst)


class Journal:
    """The append-only journal of one DATA folder and the steps it records (see the module docstring).

    Steps: ``{"seq", "op": "move"|"mkdir"|"rmdir"|"keep", "batch", ...}``; ``{"seq", "op": "done",
    "ref"}`` once a step's change is on disk; a step that reverses another carries ``"undoes": seq``.
    One batch = one action on the page (e.g. "keep one copy" sets several files aside)."""

    def __init__(self, folder: DataFolder, *, exclusive: bool = False) -> None:
        self.folder = folder
        self.path = folder.root / JOURNAL_FILE
        self._lock = threading.RLock()
        self._held = None
        self.records: list[dict[str, Any]] = []
        if self.path.is_symlink():
            raise ReviewError(f"{self.path}: the journal is a symbolic link; refusing to write through it")
        if exclusive:
            self._hold()
        if self.path.exists():
            text = self.path.read_text(encoding="utf-8")
            for line in text.splitlines():
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    # A line cut short by a crash while appending: its step was never acted on (the
                    # change only follows a whole, fsynced line), so it never happened.
                    continue
            if text and not text.endswith("\n"):
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write("\n")
        self.recovered = self.recover()

    def _hold(self) -> None:
        """An exclusive lock on the journal for this object's life (released by the OS if the process
        dies): a second review of the same folder (a page or --undo) is refused, not interleaved."""
        import fcntl  # optional: fcntl

        f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open on purpose
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise ReviewError(
                f"{self.folder.root}: another convnets review is working on this folder", 409
            ) from None
        self._held = f

    # -- writing ---------------------------------------------------------------------------------

    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {"seq": (self.records[-1]["seq"] + 1) if self.records else 1, **record}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        return record

    def _next_batch(self) -> int:
        return max((r.get("batch", 0) for r in self.records), default=0) + 1

    def _apply(self, step: dict[str, Any]) -> None:
        """Make ``step``'s change on disk unless it is there already; then mark it done."""
        root = self.folder.root
        op = step["op"]
        if op == "move":
            src, dst = root / step["src"], root / step["dst"]
            if src.exists() and not dst.exists():
                _move(src, dst)
            elif not (dst.exists() and not src.exists()):
                raise ReviewError(
                    f"journal step {step['seq']}: cannot move {step['src']} -> {step['dst']} "
                    "(the source is gone or the destination is taken)",
                    409,
                )
        elif op == "mkdir":
            (root / step["path"]).mkdir(exist_ok=True)
        elif op == "rmdir":
            try:
                (root / step["path"]).rmdir()  # only when empty: nothing is ever deleted
            except FileNotFoundError:
                pass
            except OSError:
                pass  # something new lives there: the folder stays
        self._append({"op": "done", "ref": step["seq"]})

    def recover(self) -> list[int]:
        """Finish every step written but not marked done (a crash); returns their numbers."""
        with self._lock:
            done = {r["ref"] for r in self.records if r["op"] == "done"}
            pending = [r for r in self.records if r["op"] != "done" and r["seq"] not in done]
            for step in pending:
                self._apply(step)
            return [s["seq"] for s in pending]

    def _step(self, step: dict[str, Any]) -> dict[str, Any]:
        if step["op"] == "move":  # refused before it is journalled, e.g. a file moved by hand since
            src, dst = self.folder.root / step["src"], self.folder.root / step["dst"]
            if not src.exists() or dst.exists() or dst.is_symlink():
                raise ReviewError(
                    f"cannot move {step['src']} -> {step['dst']}: the source is gone or the destination "
                    "is taken (changed outside the review?)",
                    409,
                )
        record = self._append(step)  # written (fsynced) before the change: a crash loses nothing
        self._apply(record)
        return record

    def _ensure_dir(self, rel_dir: str, batch: int) -> None:
        self.folder.check_dir_inside(rel_dir)
        parts = rel_dir.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if not (self.folder.root / sub).is_dir():
                self._step({"op": "mkdir", "batch": batch, "path": sub})

    # -- actions ----------------------------------------------------------------------------------

    def relabel(self, rel: str, new_class: str) -> list[Move]:
        """Move the image ``rel`` into the class folder ``new_class`` (of its split when pre-split)."""
        with self._lock:
            new_class = check_class_name(new_class)
            src = self.folder.file(rel)
            prefix, old = self.folder.class_of(rel)
            if new_class == old:
                raise ReviewError(f"{rel} is already in class {new_class!r}")
            batch = self._next_batch()
            target_dir = prefix + new_class
            self._ensure_dir(target_dir, batch)
            dst = self.folder.free_name(target_dir, src.name)
            self._step({"op": "move", "batch": batch, "action": "relabel", "src": rel, "dst": dst})
            return [Move(rel, dst)]

    def set_aside(self, rels: list[str], action: str = "quarantine") -> list[Move]:
        """Move images into ``DATA/.quarantine/`` under their own paths (one batch)."""
        with self._lock:
            if not rels:
                raise ReviewError("nothing to set aside")
            for rel in rels:
                self.folder.file(rel)  # every path checked before anything moves
            batch = self._next_batch()
            moves = []
            for rel in rels:
                parent = str(PurePosixPath(QUARANTINE_DIR, rel).parent)
                self._ensure_dir(parent, batch)
                dst = self.folder.free_name(parent, PurePosixPath(rel).name)
                self._step({"op": "move", "batch": batch, "action": action, "src": rel, "dst": dst})
                moves.append(Move(rel, dst))
            return moves

    def keep_one(self, group: list[str], keep: str) -> list[Move]:
        """Of a duplicate group keep ``keep`` where it is and set the other copies aside."""
        if keep not in group:
            raise ReviewError(f"{keep!r} is not in the group")
        others = list(dict.fromkeys(p for p in group if p != keep))
        with self._lock:
            self.folder.file(keep)
            return self.set_aside(others, action="keep-one")

    def keep(self, rel: str) -> None:
        """Record that ``rel`` was looked at and stays (no file changes)."""
        with self._lock:
            self.folder.file(rel)
            self._step({"op": "keep", "batch": self._next_batch(), "path": rel})

    # -- undo -------------------------------------------------------------------------------------

    def live_steps(self) -> list[dict[str, Any]]:
        """Steps in effect: done and not undone (undo steps themselves are never live)."""
        done = {r["ref"] for r in self.records if r["op"] == "done"}
        undone = {r["undoes"] for r in self.records if "undoes" in r and r["seq"] in done}
        return [
            r
            for r in self.records
            if r["op"] != "done" and "undoes" not in r and r["seq"] in done and r["seq"] not in undone
        ]

    def undo_last(self) -> list[Move]:
        """Reverse the last action still in effect (its steps in reverse order); [] when none."""
        with self._lock:
            live = self.live_steps()
            if not live:
                return []
            last = live[-1]["batch"]
            batch = self._next_batch()
            moves = []
            for step in reversed([s for s in live if s["batch"] == last]):
                if step["op"] == "move":
                    self._step(
                        {"op": "move", "batch": batch, "action": "undo", "undoes": step["seq"],
                         "src": step["dst"], "dst": step["src"]}
                    )  # fmt: skip
                    moves.append(Move(step["dst"], step["src"]))
                elif step["op"] == "mkdir":
                    self._step({"op": "rmdir", "batch": batch, "undoes": step["seq"], "path": step["path"]})
                else:
                    self._step({"op": "note", "batch": batch, "undoes": step["seq"]})
            return moves

    def undo_all(self) -> list[Move]:
        """Reverse every action in effect, last first: DATA as it was before the review."""
        moves: list[Move] = []
        while True:
            step = self.undo_last()
            if not step and not self.live_steps():
                return moves
            moves += step

    # -- what the page shows ----------------------------------------------------------------------

    def _effects(self) -> tuple[dict[str, str], dict[str, str]]:
        location: dict[str, str] = {}  # original path -> where it is now
        action: dict[str, str] = {}  # original path -> the last action in effect on it
        for step in self.live_steps():
            if step["op"] == "move":
                origin = next((o for o, now in location.items() if now == step["src"]), step["src"])
                location[origin] = step["dst"]
                action[origin] = step.get("action", "move")
            elif step["op"] == "keep":
                origin = next((o for o, now in location.items() if now == step["path"]), step["path"])
                action[origin] = "keep"
        return location, action

    def where(self) -> dict[str, str]:
        """Original path -> where the file is now, for every file a live move touched."""
        return self._effects()[0]

    def decisions(self) -> dict[str, str]:
        """Original path -> the action in effect on it ("relabel", "quarantine", "keep-one", "keep")."""
        return self._effects()[1]

    def summary(self) -> dict[str, Any]:
        live = self.live_steps()
        return {
            "journal": str(self.path),
            "actions_in_effect": len({s["batch"] for s in live}),
            "moves_in_effect": sum(s["op"] == "move" for s in live),
            "recovered_steps": self.recovered,
            "updated": time.time(),
        }
