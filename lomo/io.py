"""Atomic file writes: a reader (or a killed run's rerun) never sees half a file."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import yaml


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def open_atomic(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` when the block ends without an error (readers see the
    old file or the whole new one, never half of it). The file gets the mode a plain open()
    would give (0666 less the umask): mkstemp's 0600 would hide results from the rest of a group
    on a shared cluster. Synced to disk before the rename, so a preempted node leaves no empty
    file behind a finished name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    with open_atomic(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; a syntax error is one line naming file:line:column and the
    problem (PyYAML's own message spans several lines and shows the parser's internals)."""
    return parse_yaml(Path(path).read_text(), str(path))


def parse_yaml(text: str, where: str) -> Any:
    """YAML text's content; a syntax error is one line `where:line:column: invalid YAML: ...`."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        raise ValueError(f"{where}: invalid YAML: {error.problem}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{where}: invalid YAML: {' '.join(str(error).split())}") from None
