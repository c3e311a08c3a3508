"""Reading files a user names: regular files only, size-capped, never blocking.

A model, certificate or manifest path may name a FIFO (``open`` would wait forever for a
writer), a device (``/dev/zero`` never ends), a directory or a socket, possibly through a
symlink. :func:`check_regular` refuses those after resolving symlinks, before any library
opens the path; :func:`read_regular` also opens the file with ``O_NONBLOCK`` (a FIFO swapped in
after the check cannot block), re-checks the open descriptor and reads at most
``max_bytes + 1`` bytes. Every refusal is one line naming the file and what is wrong.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import LipverifyError, ModelLoadError

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
)


def shown(path) -> str:
    """A path for a one-line message: as given, or its repr when it holds control
    characters (a newline in a file name) or bytes that are not valid UTF-8."""
    text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return repr(text)
    return text if text.isprintable() else repr(text)


def size_text(n: int) -> str:
    """``n`` bytes in words: 16 MiB, 4 GiB, 512 bytes."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def _kind(mode: int) -> str | None:
    """What a non-regular file is (None: a regular file)."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _refuse_stat(path, st: os.stat_result, what: str, max_bytes: int | None,
                 error: type[LipverifyError]) -> None:
    kind = _kind(st.st_mode)
    if kind is not None:
        raise error(f"{shown(path)}: the {what} is {kind}, not a regular file; "
                    f"pass a regular {what}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{shown(path)}: the {what} is {size_text(st.st_size)}, over the "
                    f"{size_text(max_bytes)} limit; is it the right file?")


def _as_path(path, what: str, error: type[LipverifyError]) -> str | bytes:
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise error(f"{what}: expected a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if not path:
        raise error(f"{what}: an empty path; pass a file")
    if "\0" in (path if isinstance(path, str) else path.decode("latin-1")):
        raise error(f"{shown(path)}: the {what} path holds a NUL character; pass a real path")
    return path


def _os_error(path, what: str, exc: OSError, error: type[LipverifyError]) -> LipverifyError:
    if isinstance(exc, FileNotFoundError):
        return error(f"{shown(path)}: no such {what}; check the path")
    why = exc.strerror or type(exc).__name__
    return error(f"{shown(path)}: cannot read the {what} ({why}); check the path and "
                 "its permissions")


def check_regular(path, what: str = "file", *, max_bytes: int | None = None,
                  error: type[LipverifyError] = ModelLoadError) -> Path:
    """``path`` as a Path if it names (through symlinks) a regular file of at most
    ``max_bytes``; else ``error`` (default ModelLoadError, exit 3) naming the file.

    For loaders that hand the path to a library (onnx, torch, numpy): nothing is opened.

    >>> check_regular("/dev/null", "model file")
    Traceback (most recent call last):
    ...
    lipverify.errors.ModelLoadError: /dev/null: the model file is a character device, not a \
regular file; pass a regular model file
    """
    path = _as_path(path, what, error)
    try:
        st = os.stat(path)  # follows symlinks; never opens (a FIFO cannot block here)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValueError):  # e.g. a path too long for the platform
            raise error(f"{shown(path)}: not a usable path for the {what} ({exc})") from None
        raise _os_error(path, what, exc, error) from None
    _refuse_stat(path, st, what, max_bytes, error)
    return Path(os.fsdecode(path))


def read_regular(path, *, what: str = "file", max_bytes: int,
                 error: type[LipverifyError] = ModelLoadError) -> bytes:
    """The bytes of ``path``: a regular file (after symlinks) of at most ``max_bytes``.

    Opened with ``O_NONBLOCK`` and re-checked with ``fstat`` after opening, so a FIFO or
    device swapped in after the first check is refused instead of blocking; at most
    ``max_bytes + 1`` bytes are ever read (a file that grows past the cap is refused).
    """
    check_regular(path, what, max_bytes=max_bytes, error=error)
    path = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) \
        | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _os_error(path, what, exc, error) from None
    try:
        _refuse_stat(path, os.fstat(fd), what, max_bytes, error)
        chunks, total = [], 0
        while total <= max_bytes:
            try:
                chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            except BlockingIOError:  # not a regular file after all
                raise error(f"{shown(path)}: the {what} would block; pass a regular file") \
                    from None
            except OSError as exc:
                raise _os_error(path, what, exc, error) from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise error(f"{shown(path)}: the {what} is over the {size_text(max_bytes)} limit "
                        "(it grew while being read); is it the right file?")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_regular_text(path, *, what: str = "file", max_bytes: int,
                      error: type[LipverifyError] = ModelLoadError) -> str:
    """:func:`read_regular`, decoded as UTF-8 (a leading byte-order mark is dropped);
    bytes that are not UTF-8 are ``error`` naming the file and the offset."""
    data = read_regular(path, what=what, max_bytes=max_bytes, error=error)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{shown(path)}: the {what} is not UTF-8 text (byte {exc.start} is "
                    f"{data[exc.start:exc.start + 1]!r}); is it a binary file?") from None
