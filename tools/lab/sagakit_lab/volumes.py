"""A small volume of its own whose writes really fail: full, or read-only, on command.

A store on a full or read-only disk fails the way a real one does only if the kernel says
so: ``SmallVolume`` makes an ext4 file system of a few MB in a sparse image file, mounts
it through a loop device on a temporary directory (root only), a service's SQLite file
goes there, and then:

- ``fill()`` writes a ballast file over all the free space (``ENOSPC``: SQLite answers
  ``database or disk is full``), ``free()`` deletes it;
- ``read_only()`` makes every write fail. A ``mount -o remount,ro`` is what an operator
  sees, but the kernel refuses it (``EBUSY``) while a process holds a file open for
  writing, and SQLite holds its database that way for as long as it runs. So, when the
  remount is refused, every file and directory on the volume is flagged immutable
  (``chattr +i``, which binds root too), except SQLite's ``-shm`` index files: those are
  memory-mapped, and a write through a mapping of an immutable file kills the process with
  SIGBUS instead of failing a write. ``writable()`` undoes either. (ext4 refuses writes
  to an immutable file through descriptors opened before; tmpfs does not, hence ext4.)

``close()`` (or leaving the ``with`` block, also on an exception) frees the volume and
unmounts it; a volume still in use by a live process is detached lazily.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Literal

from sagakit import SagaError

__all__ = ["ReadOnlyMethod", "SmallVolume", "VolumeError", "VolumeUnavailable"]

ReadOnlyMethod = Literal["remount", "immutable"]

_BALLAST = ".ballast"
# linux/fs.h: the flags ioctls take and return an int, whatever their encoded size says.
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_IMMUTABLE_FL = 0x00000010
_CHUNK = 1024 * 1024


class VolumeError(SagaError):
    """Something about the small volume failed."""


class VolumeUnavailable(VolumeError):
    """No volume can be mounted here (not root, no mount permission in a container)."""


class SmallVolume:
    """An ext4 file system of ``size_mb`` MB, loop-mounted on a temporary directory.

    Args:
        size_mb: The volume's size. Leave room for the database and its WAL (SQLite's WAL
            grows to about 4 MB between checkpoints). At least 2.
        parent_dir: Where the mount point is created (default: the system's temp dir).

    Example:
        ```python
        with SmallVolume(size_mb=16) as volume:
            url = f"sqlite+aiosqlite:///{volume.path}/shipping.db"
            volume.fill()  # every write that needs space fails
            volume.free()
            volume.read_only()  # every write fails
            volume.writable()
        ```
    """

    def __init__(
        self, *, size_mb: int = 16, parent_dir: str | os.PathLike[str] | None = None
    ) -> None:
        if size_mb < 2:
            raise ValueError("size_mb must be at least 2")
        self.size_mb = size_mb
        self._parent_dir = parent_dir
        self._directory: Path | None = None
        self._path: Path | None = None
        self._immutable: list[Path] = []
        self.read_only_method: ReadOnlyMethod | None = None

    @property
    def path(self) -> Path:
        """The mount point: put the files whose writes should fail here."""
        if self._path is None:
            raise VolumeError("the volume is not mounted")
        return self._path

    @property
    def mounted(self) -> bool:
        """True while the volume is mounted."""
        return self._path is not None

    @property
    def free_bytes(self) -> int:
        """Bytes still free for an unprivileged write (as ``df`` says)."""
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    @property
    def ballast_bytes(self) -> int:
        """The size of the ballast file (0 when the volume is not filled)."""
        try:
            return (self.path / _BALLAST).stat().st_size
        except FileNotFoundError:
            return 0

    # -- life cycle --------------------------------------------------------------------

    def mount(self) -> Path:
        """Make the file system and mount it; its path.

        Raises:
            VolumeUnavailable: This process may not mount file systems, or there is no
                ``mkfs.ext4`` or loop device.
        """
        if self._path is not None:
            return self._path
        mount, mkfs = shutil.which("mount"), shutil.which("mkfs.ext4")
        if mount is None or mkfs is None:
            raise VolumeUnavailable("mount and mkfs.ext4 are needed on PATH")
        directory = Path(tempfile.mkdtemp(prefix="sagakit-vol-", dir=self._parent_dir))
        image, path = directory / "volume.img", directory / "mnt"
        path.mkdir()
        with image.open("wb") as file:
            file.truncate(self.size_mb * 1024 * 1024)
        # No reserved blocks (root would write into them anyway), no journal (a few MB less
        # to fill, and nothing here needs one: the faults are refusals, not lost writes).
        made = subprocess.run(
            [mkfs, "-q", "-F", "-m", "0", "-O", "^has_journal", str(image)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        done = made
        if made.returncode == 0:
            done = subprocess.run(
                [mount, "-o", "loop", str(image), str(path)],
                capture_output=True,
                text=True,
                timeout=60,
            )
        if done.returncode != 0:
            shutil.rmtree(directory, ignore_errors=True)
            raise VolumeUnavailable(
                "cannot make and loop-mount a small ext4 volume (root with CAP_SYS_ADMIN and"
                f" a loop device are needed): {done.stderr.strip()}"
            )
        self._directory, self._path = directory, path
        return path

    def close(self) -> None:
        """Undo any fault, unmount and remove the mount point (idempotent)."""
        path, self._path = self._path, None
        if path is None:
            return
        try:
            self._path = path
            with contextlib.suppress(VolumeError, OSError):
                self.writable()
        finally:
            self._path = None
        umount = shutil.which("umount") or "umount"
        done = subprocess.run([umount, str(path)], capture_output=True, timeout=30)
        if done.returncode != 0:
            # A process still holds a file there: detach now, freed when it lets go (the
            # loop device with it: mount -o loop sets it to clear itself).
            subprocess.run([umount, "-l", str(path)], capture_output=True, timeout=30)
        directory, self._directory = self._directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> SmallVolume:
        self.mount()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- full --------------------------------------------------------------------------

    def fill(self) -> int:
        """Take every free byte with a ballast file; returns its size in bytes."""
        ballast = self.path / _BALLAST
        descriptor = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            free = self.free_bytes
            if free > 0:
                with contextlib.suppress(OSError):
                    os.posix_fallocate(descriptor, os.fstat(descriptor).st_size, free)
            # Whatever fallocate left (rounding, reserved blocks): write until nothing fits.
            chunk = _CHUNK
            while chunk >= 512:
                try:
                    os.write(descriptor, b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk //= 2
        finally:
            os.close(descriptor)
        return self.ballast_bytes

    def free(self) -> None:
        """Delete the ballast file."""
        with contextlib.suppress(FileNotFoundError):
            (self.path / _BALLAST).unlink()

    # -- read-only ---------------------------------------------------------------------

    def read_only(self) -> ReadOnlyMethod:
        """Make every write on the volume fail; how (see the module's docstring).

        Raises:
            VolumeError: Neither way works here.
        """
        if self.read_only_method is not None:
            return self.read_only_method
        if self._remount("ro"):
            self.read_only_method = "remount"
            return "remount"
        flagged: list[Path] = []
        try:
            for root, directories, files in os.walk(self.path):
                for name in files:
                    if not name.endswith("-shm"):
                        flagged.append(Path(root, name))
                        _set_immutable(flagged[-1], True)
                for name in directories:
                    flagged.append(Path(root, name))
                    _set_immutable(flagged[-1], True)
            # The directory itself last: no file may be created (a new WAL) or removed.
            flagged.append(self.path)
            _set_immutable(self.path, True)
        except OSError as exc:
            for path in flagged:
                with contextlib.suppress(OSError):
                    _set_immutable(path, False)
            raise VolumeError(f"cannot make {self.path} read-only: {exc}") from exc
        self._immutable = flagged
        self.read_only_method = "immutable"
        return "immutable"

    def writable(self) -> None:
        """Undo ``read_only()``."""
        method, self.read_only_method = self.read_only_method, None
        if method == "remount":
            if not self._remount("rw"):
                raise VolumeError(f"cannot remount {self.path} read-write")
        elif method == "immutable":
            flagged, self._immutable = self._immutable, []
            for path in reversed(flagged):
                with contextlib.suppress(FileNotFoundError):
                    _set_immutable(path, False)

    def _remount(self, mode: Literal["ro", "rw"]) -> bool:
        mount = shutil.which("mount") or "mount"
        done = subprocess.run(
            [mount, "-o", f"remount,{mode}", str(self.path)], capture_output=True, timeout=30
        )
        return done.returncode == 0


def _set_immutable(path: Path, immutable: bool) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(descriptor, _FS_IOC_GETFLAGS, flags, True)
        if immutable:
            flags[0] |= _FS_IMMUTABLE_FL
        else:
            flags[0] &= ~_FS_IMMUTABLE_FL
        fcntl.ioctl(descriptor, _FS_IOC_SETFLAGS, flags, True)
    finally:
        os.close(descriptor)
