"""Reading inputs and writing outputs without surprises: clear errors, nothing half-written,
and never a user's file or folder deleted or overwritten that nmtkit did not create.

    check_input_file      a readable file (not a folder, not missing), else one clear error
    check_new_folder      a command's new output folder: not there yet, and below a folder
    temp_folder           a temp folder beside a final path, with the umask's permissions and a
                          name that tells which process made it (so a later run can clean it up)
    remove_stale          clean temp folders left by processes that were killed
    write_text_atomic     write a file via a temp file and a rename
    write_output_text     the same for a path a user names, which may be a device or a pipe
    check_output_file     refuse to overwrite an input, a folder, or a file of another kind
    naming                an OSError with the path being written, where it names none
    os_error              an OSError (full disk, read-only folder, ...) as a one-line NMTKitError
    FolderLock            one process at a time in a folder (a run folder being trained)
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from nmtkit.errors import NMTKitError


def check_input_file(path: Path, what: str, allow_stream: bool = False) -> Path:
    """`path` must be a readable regular file (or, with allow_stream, a pipe such as
    `<(command)`, read once). `what` names it in the error: 'data file', 'config file'..."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NMTKitError(f"{what} not found: {path}") from None
    except OSError as err:
        raise NMTKitError(f"{what} {path}: {err.strerror}") from None
    if stat.S_ISDIR(mode):
        raise NMTKitError(f"{what} {path} is a folder, not a file")
    if not stat.S_ISREG(mode) and not (allow_stream and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode))):
        raise NMTKitError(f"{what} {path} is not a regular file (a pipe or device: nmtkit reads "
                          "it more than once, so give it a file)")
    if not os.access(path, os.R_OK):
        raise NMTKitError(f"{what} {path}: permission denied (not readable)")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def as_user_file(path: Path) -> None:
    """Give a file the permissions a file the user creates gets (some writers, safetensors
    among them, make their files private)."""
    os.chmod(path, 0o666 & ~_umask())


def temp_folder(final: Path, kind: str = "tmp") -> Path:
    """An empty folder beside `final`, renamed into place once complete. mkdtemp makes it
    private (0700); it gets the permissions any folder the user makes would get, so that a
    checkpoint or prepared data is as readable as the rest of their files. Its name carries
    this process's id, so `remove_stale` knows a folder whose process is gone."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{kind}-{os.getpid()}-", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def check_new_folder(out: Path, what: str) -> None:
    """A command's new output folder `out` (`what` it will hold), before any work: it must not
    exist, and the nearest existing path above it must be a folder (else mkdir would fail late,
    naming the wrong path)."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise NMTKitError(f"{out} already exists: choose a new folder for the {what}")
    above = next((p for p in out.parents if p.exists() or p.is_symlink()), Path("."))
    if not above.is_dir():
        raise NMTKitError(f"{out}: {above} is a file, not a folder: choose another place for the {what}")


def remove_stale(final: Path) -> None:
    """Delete the temp files and folders of `final` (see temp_folder; `final`'s name may be a
    glob pattern such as 'ckpt-*') whose process no longer runs: what a `kill -9` or a power
    cut left behind."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    for path in final.parent.glob(f".{final.name}.*-*-*"):
        match = _TEMP_NAME.search(path.name)
        if match and not _alive(int(match.group(1))):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


_TEMP_NAME = re.compile(r"\.(?:tmp|old|del)-(\d+)-[^/]*$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def temp_name(final: Path, kind: str = "tmp") -> Path:
    """A name beside `final` for a temp file or link, in remove_stale's pattern."""
    final = Path(final)
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}-0")


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file beside it: a crash or a full disk leaves the old
    file (or none), never half of the new one."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise naming(err, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_output_text(path: Path, text: str) -> None:
    """A user-named output: a regular file (or a link to one) is replaced atomically; a device
    or pipe (/dev/stdout, /dev/full, a FIFO) is written into, never replaced by a file."""
    path = Path(path)
    if path.exists() and not path.resolve().is_file():
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        return
    write_text_atomic(path.resolve() if path.is_symlink() else path, text)


def check_output_file(path: Path, inputs: Iterable[Path] = (), magic: bytes | None = None,
                      option: str = "--out", makes_folder: bool = False, force: bool | None = None
                      ) -> Path:
    """An output file may replace a file of its own kind (one starting with `magic`, when
    given), never one of the command's inputs, a folder, or a file of another kind. Its folder
    must exist, unless the writer makes it (`makes_folder`). A text output has no kind to tell:
    with `force` given, an existing regular file is replaced only when it is True."""
    path = Path(path)
    if path.is_dir():
        raise NMTKitError(f"{option} {path} is a folder; give a file name")
    if path.exists() and not path.resolve().is_file():
        return path  # a device or a pipe: written into, not replaced
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), Path("."))
        if not parent.is_dir():
            raise NMTKitError(f"{option} {path}: {parent} is a file, not a folder")
        if not makes_folder and parent != path.parent:
            raise NMTKitError(f"{option} {path}: the folder {path.parent} does not exist")
        return path
    for given in inputs:
        if Path(given).exists() and path.samefile(given):
            raise NMTKitError(f"{option} {path} is one of this command's inputs; it would be "
                              "overwritten: choose another file")
    if force is False:
        raise NMTKitError(f"{option} {path} exists; add --force to replace it, or choose "
                          "another name")
    if magic is not None:
        with open(path, "rb") as f:
            if f.read(len(magic)) != magic:
                raise NMTKitError(f"{option} {path} exists and is not a file nmtkit wrote; "
                                  "choose another name or remove it")
    return path


def naming(err: OSError, path: Path) -> OSError:
    """`err` with the path being written, where it has none (a write() on a full disk names no
    file), so that the one-line error says where the space ran out."""
    if err.filename:
        return err
    return OSError(err.errno, err.strerror or str(err), str(path))


def os_error(err: OSError, doing: str = "") -> NMTKitError:
    """A one-line error for an OSError a user can cause or fix: a full disk, a read-only or
    missing folder, a file where a folder should be."""
    where = err.filename or ""
    reasons = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large for the device or the process's file size limit",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOTDIR: "a file is in the way where a folder should be",
        errno.EEXIST: "it already exists",
        errno.ENOENT: "no such file or folder",
        errno.EISDIR: "it is a folder",
    }
    reason = reasons.get(err.errno, err.strerror or str(err))
    prefix = f"{doing}: " if doing else ""
    return NMTKitError(f"{prefix}{where}{': ' if where else ''}{reason}")


LOCK_NAME = ".lock"


class FolderLock:
    """An OS lock (flock) on `folder/.lock`: held while the process runs, released by the
    kernel when it ends in any way (a `kill -9` or a crash too), so no stale lock is left to
    clean up. The file holds the holder's PID, for the message of the process that is refused.
    The file itself stays (removing it would let a third process lock a new file while a
    second still waits on the old one)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, what: str) -> None:
        """Take the lock or raise the one-line error naming the holder; `what` names the
        folder in it (e.g. 'training.out_dir runs/x')."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = lock_holder(self.path.parent)
            raise NMTKitError(f"{what} is in use by another nmtkit process ({holder}): wait "
                              "for it to end, stop it, or choose another folder") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the lock
            self._fd = None


def lock_holder(folder: Path) -> str | None:
    """'PID n' of the process holding `folder`'s lock, or None when no process holds it."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode("ascii", "replace").strip()
            return f"PID {text}" if text.isdigit() else "PID not yet written"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
