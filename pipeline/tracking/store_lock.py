"""A busy MLflow store: waited for, for a bounded time, then one paragraph saying which store and what to do.

SQLite lets one process write at a time. MLflow 3.17 sets `PRAGMA busy_timeout = 20000` on every session it opens
(mlflow/store/db/utils.py, `make_managed_session`), overriding any timeout in the URI, so a lock held longer than
20 s (an `mlflow` or `sqlite3` process inside a transaction, a backup, a copy) fails the operation with
`sqlite3.OperationalError: database is locked`, deep inside SQLAlchemy. So before a stage's first write, before the
train stage logs its model, and before a run is ended, the stage waits for the write lock itself, up to
`STORE_WAIT_ENV` seconds, saying in its log that it waits and on what.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from pipeline.errors import UserError

logger = logging.getLogger(__name__)

STORE_WAIT_ENV = "PIPELINE_MLFLOW_STORE_WAIT_S"
# Five minutes: a backup or a long `mlflow gc` ends within it, and a stage does not hang for ever behind a shell
# left open in a transaction.
DEFAULT_STORE_WAIT_S = 300.0
# Each try waits this long inside SQLite, so the short writes of a parallel stage are not reported as a wait.
PROBE_TIMEOUT_S = 1.0


class StoreLockedError(UserError):
    """The MLflow store stayed locked by another process for longer than the stage waits."""


def store_wait_s() -> float:
    """Seconds to wait for a locked store: `STORE_WAIT_ENV` if set (tests keep it short), else the default."""
    return float(os.environ.get(STORE_WAIT_ENV, DEFAULT_STORE_WAIT_S))


def sqlite_database(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for any other store (a server queues its own writes)."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def is_locked(error: BaseException | None) -> bool:
    """Whether `error`, or an error it wraps (SQLAlchemy's `orig`, MLflow's cause), is SQLite's busy lock."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            return True
        error = getattr(error, "orig", None) or error.__cause__ or error.__context__
    return False


def locked_error(uri: str, waited_s: float) -> StoreLockedError:
    database = sqlite_database(uri) or uri
    return StoreLockedError(
        f"the MLflow store {database} is locked by another process (still after waiting {waited_s:.0f} s): find it "
        f"with `fuser {database}` (an `mlflow` or `sqlite3` process inside a transaction, a backup, a copy), let it "
        f"finish or stop it, then rerun the stage (`dvc repro`); to wait longer, set {STORE_WAIT_ENV}=<seconds>"
    )


def wait_for_store(uri: str) -> None:
    """Return once the SQLite store at `uri` can be written, or raise `StoreLockedError` after `store_wait_s()`."""
    database = sqlite_database(uri)
    if database is None or not database.exists():  # a new store is created under a file lock (runs.py)
        return
    wait_s = store_wait_s()
    started = time.monotonic()
    next_report = started
    while not _writable(database):
        now = time.monotonic()
        if now - started >= wait_s:
            raise locked_error(uri, wait_s)
        if now >= next_report:  # the first time, then every half minute: a wait is said, not a log flooded
            logger.warning("the MLflow store %s is locked by another process: waiting for it (%.0f of at most %.0f "
                           "s; %s sets the limit)", database, now - started, wait_s, STORE_WAIT_ENV)  # fmt: skip
            next_report = now + 30
        time.sleep(min(PROBE_TIMEOUT_S, max(0.0, started + wait_s - now)))


@contextmanager
def locked_store_as_user_error(uri: str) -> Iterator[None]:
    """A lock that outlasted MLflow's own 20 s wait inside the block becomes the one-paragraph `StoreLockedError`."""
    try:
        yield
    except Exception as error:
        if is_locked(error):
            raise locked_error(uri, store_wait_s()) from None
        raise


def _writable(database: Path) -> bool:
    """Take and release SQLite's write lock (BEGIN IMMEDIATE): blocked while another connection writes or holds
    an EXCLUSIVE transaction, in WAL mode as in the default journal mode."""
    with closing(sqlite3.connect(database, timeout=PROBE_TIMEOUT_S, isolation_level=None)) as connection:
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if is_locked(error):
                return False
            raise
        connection.execute("ROLLBACK")
    return True
