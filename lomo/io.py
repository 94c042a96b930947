"""Atomic file writes: a reader (or a killed run's rerun) never sees half a file."""

import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file.
    The file gets the mode a plain open() would give (0666 less the umask): mkstemp's 0600
    would hide results from the rest of a group on a shared cluster."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
