"""Small files next to a grid's Tune results, on a local folder or any URI Tune supports
(``s3://``, ``gs://``, ``file://``...), through pyarrow's filesystems."""

from __future__ import annotations

import os

from pyarrow import fs as pafs


def is_uri(path: str) -> bool:
    return "://" in str(path)


def join(base: str, name: str) -> str:
    """``base/name`` for a folder or a URI (a URI's query string, e.g. ``?region=...``, stays last)."""
    if not is_uri(base):
        return os.path.join(base, name)
    path, sep, query = str(base).partition("?")
    return f"{path.rstrip('/')}/{name}{sep}{query}"


def _resolve(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), os.path.abspath(path)


def exists(path: str) -> bool:
    filesystem, p = _resolve(path)
    return filesystem.get_file_info(p).type != pafs.FileType.NotFound


def size(path: str) -> int:
    """The size of the file at ``path`` (local or URI) in bytes; 0 when there is none."""
    fs, p = _resolve(path)
    info = fs.get_file_info(p)
    return (info.size or 0) if info.type == pafs.FileType.File else 0


def write_text(path: str, text: str) -> None:
    """Write a small state file whole: on a local folder to a temporary name, then renamed over
    (a crash never leaves it half-written); on object storage objects are written whole anyway."""
    if not is_uri(path):
        _atomic_local(os.path.abspath(path), text)
        return
    filesystem, p = _resolve(path)
    parent = p.rsplit("/", 1)[0]
    if parent:
        filesystem.create_dir(parent, recursive=True)
    with filesystem.open_output_stream(p) as f:
        f.write(text.encode())


def delete(path: str) -> None:
    """Remove one file, if it is there."""
    filesystem, p = _resolve(path)
    if filesystem.get_file_info(p).type != pafs.FileType.NotFound:
        filesystem.delete_file(p)


def read_text(path: str) -> str:
    filesystem, p = _resolve(path)
    with filesystem.open_input_stream(p) as f:
        return f.read().decode()


def _atomic_local(path: str, text: str) -> None:
    import uuid

    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
