"""The results store: one SQLite row per finished job, written the moment it finishes.

Each job is its own transaction in a WAL-mode database with ``synchronous=FULL``, so
killing a batch (even with SIGKILL) loses only the jobs in flight. A corrupt, foreign or
locked database raises :class:`ResultsStoreError` saying what to do; nothing is ever
overwritten or dropped silently.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..results import BoundResult
from ..runtime.files import check_regular
from .jobs import Job

DEFAULT_DB = Path("results") / "lipverify.db"
SCHEMA_VERSION = "1"
COLUMNS = (
    "key", "model", "model_sha256", "method", "norm", "options", "status", "result", "error",
    "exit_code", "started_at", "finished_at", "machine", "version",
)
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,          -- sha256 of model sha256, method, norm, options, version
    model TEXT NOT NULL,           -- path as listed in the batch
    model_sha256 TEXT NOT NULL,
    method TEXT NOT NULL,
    norm TEXT NOT NULL,
    options TEXT NOT NULL,         -- canonical JSON
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    result TEXT,                   -- the full BoundResult as JSON (status ok)
    error TEXT,                    -- error class and message (status error)
    exit_code INTEGER,             -- the CLI exit code of the error
    started_at TEXT NOT NULL,      -- ISO 8601, UTC
    finished_at TEXT NOT NULL,
    machine TEXT,                  -- where the job ran
    version TEXT NOT NULL          -- lipverify version in the key
);
INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
"""


class ResultsStoreError(UsageError):
    """The results database cannot be used (corrupt, foreign, locked, unwritable)."""


@dataclass(frozen=True)
class JobRecord:
    """One finished job as stored: the result record, or the error that stopped it."""

    key: str
    model: str
    model_sha256: str
    method: str
    norm: str
    options: dict[str, Any]
    status: str  # "ok" or "error"
    result: BoundResult | None
    error: str | None
    exit_code: int | None
    started_at: str
    finished_at: str
    machine: str | None = None
    version: str = ""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        result = row["result"]
        return cls(
            key=row["key"], model=row["model"], model_sha256=row["model_sha256"],
            method=row["method"], norm=row["norm"], options=json.loads(row["options"]),
            status=row["status"],
            result=None if result is None else BoundResult.from_dict(json.loads(result)),
            error=row["error"], exit_code=row["exit_code"], started_at=row["started_at"],
            finished_at=row["finished_at"], machine=row["machine"], version=row["version"],
        )


class ResultsStore:
    """A results database file; ``create=False`` refuses to make a new one (for reading).

    >>> import tempfile, os
    >>> with ResultsStore(os.path.join(tempfile.mkdtemp(), "r.db")) as store:
    ...     store.done_keys()
    set()
    """

    def __init__(self, path: str | Path = DEFAULT_DB, *, create: bool = True,
                 timeout: float = 30.0):
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise ResultsStoreError(
                    f"{self.path}: no results database here; run `lipverify batch` first, "
                    "or pass --db with the database it wrote"
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif self.path.is_dir():
            raise ResultsStoreError(f"{self.path}: is a directory; pass --db FILE.db")
        else:
            # a FIFO or a device would block or be written to; then the schema is checked
            # through a read-only connection: a refused database stays byte-identical
            check_regular(self.path, "results database", error=ResultsStoreError)
            with self._guard("open"):
                if not self._validate_read_only(timeout) and not create:
                    raise ResultsStoreError(
                        f"{self.path}: an empty database, not a lipverify results store; run "
                        "`lipverify batch` first, or pass --db with the database it wrote")
        with self._guard("open"):
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        try:
            with self._guard("open"):
                self._init_schema()
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ set-up and errors
    def _validate_read_only(self, timeout: float) -> bool:
        """Check an existing file through a read-only connection (``mode=ro``): integrity,
        tables, columns and schema version. True when it is a lipverify store, False when it
        is an empty database; anything else raises, leaving the file byte-identical (and no
        ``-wal``/``-shm`` files of ours beside it)."""
        if self.path.stat().st_size == 0:
            return False
        sidecars = [Path(f"{self.path}{suffix}") for suffix in ("-wal", "-shm", "-journal")]
        before = {p for p in sidecars if p.exists()}
        uri = self.path.resolve().as_uri() + "?mode=ro"  # percent-encoded: spaces, ?, #, é
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
        ok = False
        try:
            found = self._check_store(conn, quick_check=True)
            ok = True
            return found
        finally:
            conn.close()
            if not ok:  # a read-only look at a WAL database may leave empty sidecars
                for p in sidecars:
                    if p not in before and p.exists():
                        p.unlink()

    def _check_store(self, c: sqlite3.Connection, quick_check: bool) -> bool:
        """Raise unless ``c`` holds a lipverify store of this schema or no table at all;
        True when the store's tables are there."""
        if quick_check:
            check = c.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return False
        if not {"meta", "results"} <= tables:
            raise ResultsStoreError(
                f"{self.path}: is an SQLite database but not a lipverify results store "
                f"(tables: {', '.join(sorted(tables))}); pass --db with another path"
            )
        columns = {r[1] for r in c.execute("PRAGMA table_info(results)")}
        missing = [col for col in COLUMNS if col not in columns]
        if missing:
            raise ResultsStoreError(
                f"{self.path}: is an SQLite database but not a lipverify results store (table "
                f"results lacks {', '.join(missing)}); pass --db with another path"
            )
        self._check_version(c)
        return True

    def _check_version(self, c: sqlite3.Connection) -> None:
        found = c.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
        if found is None or found[0] != SCHEMA_VERSION:
            raise ResultsStoreError(
                f"{self.path}: results store schema {found and found[0]!r}, this lipverify "
                f"reads {SCHEMA_VERSION!r}; use the lipverify that wrote it, or another --db"
            )

    def _init_schema(self) -> None:
        """Write mode on a checked (or new, or empty) database: WAL, and the tables if none."""
        c = self._conn
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables:  # made by another process since the read-only check? check it again
            self._check_store(c, quick_check=False)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        if not tables:
            c.executescript(SCHEMA)
        self._check_version(c)

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """sqlite3 errors -> ResultsStoreError with what to do next."""
        try:
            yield
        except ResultsStoreError:
            raise
        except sqlite3.OperationalError as exc:
            msg = str(exc)
            if "locked" in msg or "busy" in msg:
                raise ResultsStoreError(
                    f"{self.path}: the results database is locked by another process (another "
                    "`lipverify batch` writing to it?); wait for it to finish, or write to "
                    "another --db and combine them with `lipverify results merge`"
                ) from exc
            if "readonly" in msg or "unable to open" in msg:
                raise ResultsStoreError(
                    f"{self.path}: cannot {doing} the results database ({msg}); check the "
                    "directory exists and is writable, or pass --db with another path"
                ) from exc
            raise self._corrupt(exc) from exc
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from exc

    def _corrupt(self, exc: Exception) -> ResultsStoreError:
        return ResultsStoreError(
            f"{self.path}: not a readable lipverify results database ({exc}); it is corrupt "
            "or another kind of file. Nothing was changed: move it aside (its finished jobs "
            "will be recomputed) or pass --db with another path"
        )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def check_writable(self) -> None:
        """Take and release the write lock: a locked database fails now, not after a job."""
        with self._guard("write to"):
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("ROLLBACK")

    def put(self, job: Job, outcome: dict[str, Any]) -> JobRecord:
        """Store one finished job in its own transaction (replacing an earlier row)."""
        if outcome["key"] != job.key:
            raise ValueError(f"outcome for {outcome['key']} stored under job {job.key}")
        row = {
            "key": job.key, "model": job.model, "model_sha256": job.model_sha256,
            "method": job.method, "norm": job.norm, "options": job.options_json,
            "status": outcome["status"], "result": outcome.get("result"),
            "error": outcome.get("error"), "exit_code": outcome.get("exit_code"),
            "started_at": outcome["started_at"], "finished_at": outcome["finished_at"],
            "machine": outcome.get("machine"), "version": job.version,
        }
        self._insert([row])
        return self.get(job.key)

    def _insert(self, rows: list[dict]) -> None:
        sql = (f"INSERT OR REPLACE INTO results ({', '.join(COLUMNS)}) "
               f"VALUES ({', '.join(':' + c for c in COLUMNS)})")
        with self._guard("write to"):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(sql, rows)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def merge(self, other: str | Path) -> int:
        """Copy every row of another results database (e.g. one per SLURM shard) into this
        one; rows already here with the same key are kept. Returns the number added."""
        with ResultsStore(other, create=False) as src:
            rows = [dict(r) for r in src._rows("SELECT * FROM results")]
        known = self.done_keys()
        new = [r for r in rows if r["key"] not in known]
        if new:
            self._insert(new)
        return len(new)

    # ------------------------------------------------------------------ reading
    def _rows(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self._guard("read"):
            return self._conn.execute(sql, params).fetchall()

    def done_keys(self, status: str | None = None) -> set[str]:
        """Keys of finished jobs (``status="ok"`` or ``"error"`` to select)."""
        if status is None:
            return {r[0] for r in self._rows("SELECT key FROM results")}
        return {r[0] for r in self._rows("SELECT key FROM results WHERE status=?", (status,))}

    def get(self, key: str) -> JobRecord | None:
        rows = self._rows("SELECT * FROM results WHERE key=?", (key,))
        return JobRecord.from_row(rows[0]) if rows else None

    def records(self) -> list[JobRecord]:
        """Every stored job, ordered by model, norm, method."""
        try:
            return [JobRecord.from_row(r) for r in
                    self._rows("SELECT * FROM results ORDER BY model, norm, method, finished_at")]
        except (ValueError, KeyError, TypeError) as exc:
            raise self._corrupt(exc) from exc

    def __len__(self) -> int:
        return self._rows("SELECT COUNT(*) FROM results")[0][0]
