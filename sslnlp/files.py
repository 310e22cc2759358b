"""The files a run writes, whole or not at all, and where its checkpoints live.

One convention for every atomic write in sslnlp: the new content goes to ``.NAME.tmp`` beside ``NAME`` (with the
process id, ``.NAME.tmp-PID``, where several processes may write the same name at once), is flushed, and is renamed
over ``NAME``; readers see the old file or the new one, never half of either, and a leftover ``.NAME.tmp*`` is never
read. Directories (a tokenizer, a checkpoint) are written the same way.

A base module: imports nothing of sslnlp.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
LOOP_STATE = "loop_state.json"


class UnwritableError(OSError):
    """An output location that cannot be created or written (one line saying which and what to do)."""


def temporary_path(path: str | os.PathLike, per_process: bool = False) -> Path:
    """Where the new content of ``path`` is written before it is renamed into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp" + (f"-{os.getpid()}" if per_process else ""))


def remove(path: Path) -> None:
    """Remove a file or a directory tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, per_process: bool = False, replace_directory: bool = False,
                durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write a file or a directory at; on success it replaces ``path``, on an error it is
    removed and ``path`` stays as it was.

    Args:
        per_process: put the process id in the temporary name (several processes may write ``path`` at once).
        replace_directory: ``path`` may be an existing directory, removed just before the rename.
        durable: fsync the written file (or directory) and the parent after the rename (checkpoints, loop state).
    """
    path = Path(path)
    temporary = temporary_path(path, per_process)
    remove(temporary)  # a leftover of an earlier, killed write
    try:
        yield temporary
        if durable:
            fsync_path(temporary)
        if replace_directory and path.is_dir():
            shutil.rmtree(path)
        os.replace(temporary, path)
    except BaseException:
        remove(temporary)
        raise
    if durable:
        fsync_path(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str, *, durable: bool = False) -> None:
    with atomic_path(path, durable=durable) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, payload, *, indent: int | None = None, durable: bool = False) -> None:
    """Write JSON to ``path`` whole (``durable``: fsynced, for state a resume depends on)."""
    write_text_atomic(path, json.dumps(payload, indent=indent), durable=durable)


def fsync_path(path: Path) -> None:
    """Flush a file or a directory entry to disk (best effort where the platform cannot open directories)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def ensure_writable(output_dir: str | os.PathLike, key: str = "output_dir") -> Path:
    """Create ``output_dir`` and check it takes a file, before any work; ``key`` names the setting in the error."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UnwritableError(f"{key}={str(output_dir)!r} is a file, not a directory; give a directory (new or "
                              "existing) instead")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UnwritableError(f"{key}={str(output_dir)!r} is not writable ({error.strerror or error}); choose another "
                              f"{key} or fix its permissions") from None
    return output_dir


# ------------------------------------------------------------------------------- where a run keeps its checkpoints


def checkpoints_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with loop_state.json, which is written last), oldest first."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = CHECKPOINT_PATTERN.match(entry.name)
        if match and (entry / LOOP_STATE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None
