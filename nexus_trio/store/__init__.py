"""Where keys and usage outlive the process (`nexus_trio.store.base.Store`).

`store_for` picks the store the settings ask for: `SqliteStore` on ``[store] url``, else
on ``nexus.db`` beside the state file.
"""

from __future__ import annotations

from pathlib import Path

from nexus_trio.config import Settings
from nexus_trio.errors import ConfigError
from nexus_trio.store.base import Store, UsageRecord, UsageRow
from nexus_trio.store.memory import MemoryStore
from nexus_trio.store.sqlite import SqliteStore

__all__ = [
    "DEFAULT_FILE",
    "MemoryStore",
    "SqliteStore",
    "Store",
    "UsageRecord",
    "UsageRow",
    "sqlite_path",
    "store_for",
]

DEFAULT_FILE = "nexus.db"
MEMORY = ":memory:"  # SQLite's own name for a database that is never written to a file
_SCHEME = "sqlite:///"


def sqlite_path(url: str) -> Path:
    """The file a ``sqlite:///`` URL names.

    ``sqlite:///var/lib/nexus/nexus.db`` (the schema's spelling) and
    ``sqlite:////var/lib/nexus/nexus.db`` (SQLAlchemy's) both name
    ``/var/lib/nexus/nexus.db``; ``sqlite:///~/nexus.db`` is in the home directory;
    ``sqlite:///:memory:`` is SQLite's in-memory database (nothing is kept: for tests).
    """
    if not url.startswith(_SCHEME):
        raise ValueError(f"not a sqlite:/// URL: {url!r}")
    rest = url[len(_SCHEME) :]
    if rest == MEMORY:
        return Path(MEMORY)
    if rest.startswith("~"):
        return Path(rest).expanduser()
    return Path("/" + rest.lstrip("/"))


def store_for(settings: Settings, state_dir: Path) -> SqliteStore:
    """The store ``settings`` ask for, not yet opened: `SqliteStore` on ``[store] url``,
    else on ``nexus.db`` in ``state_dir`` (the state file's directory, which the caller
    knows: the fleet is a layer above the store). Creates the file's directory.

    Raises:
        ConfigError: the directory cannot be created.
    """
    url = settings.store.url
    path = sqlite_path(url) if url else state_dir.expanduser() / DEFAULT_FILE
    if path != Path(MEMORY):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create {path.parent} for the store: {exc.strerror or exc}"
            ) from exc
    return SqliteStore(path)
