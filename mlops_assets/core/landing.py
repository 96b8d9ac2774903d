"""The landing zone: where the production feed drops files, and how the platform finds them.

Layout (below ``$MLOPS_DATA_DIR/landing``)::

    <table>/<YYYY-MM>.parquet            a monthly batch, e.g. flights/2013-01.parquet
    <table>/<YYYY-MM>.parquet.sha256     its checksum, in ``sha256sum`` format
    reference/<table>.parquet            a reference table that is replaced whole, e.g. reference/planes.parquet

Files are written atomically (temporary file + rename), so a half-written file is never visible, and landing the same
bytes twice changes nothing. The ingest step verifies each batch against its checksum file before reading it. A file
whose name does not follow the layout is never ingested and never skipped in silence: :func:`misnamed_files` lists it
with the reason, and the ingest step of its table records it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REFERENCE_FOLDER = "reference"
MONTH_PATTERN = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
BATCH_SUFFIX = ".parquet"
CHECKSUM_SUFFIX = ".sha256"
#: A reference table's file name (before ``.parquet``): a table name, which is a plain lower-case identifier.
REFERENCE_STEM = re.compile(r"[a-z][a-z0-9_]*")
#: ``write_atomic``'s temporary files (``.<name>.<random>.tmp``): a write in flight, not a landed file.
TEMPORARY_NAME = re.compile(r"\..+\.tmp")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: A checksum line in BSD's form: ``SHA256 (<name>) = <digest>`` (``sha256sum --tag``) or ``SHA2-256(<name>)= <digest>``
#: (``openssl dgst -sha256``).
BSD_CHECKSUM = re.compile(r"SHA(?:2-)?256\s*\(.*\)\s*=\s*([0-9a-fA-F]{64})", re.IGNORECASE)


def utc_now() -> datetime:
    """Now in UTC, naive as every time the platform stores (DuckDB columns, the serving log)."""
    return datetime.now(UTC).replace(tzinfo=None)


def current_month(now: datetime | None = None) -> str:
    """The month of ``now`` (default: the clock, UTC) as ``YYYY-MM``: no batch may be of a month after it."""
    now = now or utc_now()
    return month_key(now.year, now.month)


def parse_month(month: str) -> tuple[int, int]:
    """Split ``"2013-03"`` into ``(2013, 3)``; raise ``ValueError`` with the expected format otherwise."""
    match = MONTH_PATTERN.fullmatch(month)  # the whole string: "2013-01\n" is no month (`$` would allow it)
    if not match:
        raise ValueError(f"month {month!r} is not of the form YYYY-MM (e.g. 2013-03)")
    return int(match.group(1)), int(match.group(2))


def month_key(year: int, month: int) -> str:
    """``(2013, 3)`` -> ``"2013-03"``."""
    return f"{year:04d}-{month:02d}"


def shift_month(month: str, delta: int) -> str:
    """The month ``delta`` months after (or before, when negative) ``month``."""
    year, mon = parse_month(month)
    index = year * 12 + (mon - 1) + delta
    return month_key(index // 12, index % 12 + 1)


def month_range(first: str, last: str) -> list[str]:
    """All months from ``first`` to ``last`` inclusive, in order."""
    (y0, m0), (y1, m1) = parse_month(first), parse_month(last)
    count = (y1 * 12 + m1) - (y0 * 12 + m0) + 1
    if count < 1:
        raise ValueError(f"month range is empty: {first} is after {last}")
    return [shift_month(first, i) for i in range(count)]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_version(path: Path) -> str | None:
    """The sha256 of a file, or None for a folder or a file that cannot be read (any more)."""
    try:
        return sha256_file(path) if path.is_file() else None
    except OSError:
        return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class LandedFile:
    """One file in the landing zone. ``month`` is ``None`` for a reference table."""

    table: str
    month: str | None
    path: Path
    sha256: str
    #: Empty when the checksum file beside it vouches for its bytes (or was not read), else what it records instead
    #: (``no checksum file`` or the recorded digest).
    unverified: str = ""

    @property
    def version(self) -> str:
        """What the landing sensor compares between ticks: the bytes' sha256, and whether their checksum file vouches
        for them, so that a batch rejected for its checksum file is ingested again once only that file is fixed (or
        lands after the batch, as ``land_file`` writes it)."""
        return f"{self.sha256}:unverified:{self.unverified}" if self.unverified else self.sha256

    @property
    def relative_name(self) -> str:
        folder = REFERENCE_FOLDER if self.month is None else self.table
        return f"{folder}/{self.path.name}"


def checksum_path(path: Path) -> Path:
    """The checksum file (``sha256sum`` format) that lands beside a batch."""
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def recorded_checksum(path: Path) -> str | None:
    """The sha256 the checksum file beside ``path`` records, lower case, or None when there is none: the first word
    (``sha256sum``'s form, ``<digest>  <name>``) or, in BSD's form (``sha256sum --tag``, ``openssl dgst``:
    ``SHA256 (<name>) = <digest>``), the last.

    A checksum file that holds no valid digest returns its first word as it is, so that the comparison fails and the
    message shows what was found.
    """
    try:
        text = checksum_path(path).read_text(errors="replace")
    except FileNotFoundError:
        return None
    tagged = BSD_CHECKSUM.match(text.strip())
    if tagged:
        return tagged.group(1).lower()
    words = text.split()
    if not words:
        return ""
    return words[0].lower() if SHA256_HEX.fullmatch(words[0].lower()) else words[0][:80]


def landing_path(landing_dir: Path, table: str, month: str | None) -> Path:
    """Where the batch of ``table`` for ``month`` (or the reference table, when ``month`` is None) lands."""
    if month is None:
        return landing_dir / REFERENCE_FOLDER / f"{table}.parquet"
    parse_month(month)
    return landing_dir / table / f"{month}.parquet"


def land_file(landing_dir: Path, table: str, month: str | None, data: bytes) -> tuple[LandedFile, str]:
    """Land one batch atomically with its checksum file.

    Returns:
        The landed file and what happened: ``"landed"`` (new), ``"replaced"`` (changed bytes) or ``"unchanged"``.
    """
    path = landing_path(landing_dir, table, month)
    digest = sha256_bytes(data)
    status = "landed"
    if path.exists():
        if sha256_file(path) == digest:
            # the same bytes: a checksum file that is missing or names other bytes (the batch was rejected for it)
            # is written again, so landing the batch again is the fix its rejection message gives
            if recorded_checksum(path) != digest:
                write_atomic(checksum_path(path), f"{digest}  {path.name}\n".encode())
            return LandedFile(table, month, path, digest), "unchanged"
        status = "replaced"
    write_atomic(path, data)
    write_atomic(checksum_path(path), f"{digest}  {path.name}\n".encode())
    return LandedFile(table, month, path, digest), status


@dataclass(frozen=True)
class MisnamedFile:
    """A file (or folder) in the landing zone whose name does not follow the layout, with why.

    Attributes:
        relative_name: its path below the landing folder, e.g. ``flights/2013-05 .parquet``.
        table: the table it was most likely meant for (its folder, or the table a reference file's name spells in
            another case), or None when nothing says which.
        reason: what is wrong and what the layout expects.
        unreadable: the name follows the layout but the file cannot be read (a broken link, no read permission).
    """

    path: Path
    relative_name: str
    table: str | None
    reason: str
    unreadable: bool = False


def _batch_name_problem(folder: str, name: str) -> str | None:
    """Why ``name`` is not a batch file name in ``folder`` (a table's folder or ``reference``), or None when it is."""
    pattern = REFERENCE_STEM if folder == REFERENCE_FOLDER else MONTH_PATTERN
    if name.endswith(BATCH_SUFFIX) and pattern.fullmatch(name.removesuffix(BATCH_SUFFIX)):
        return None
    stem, dot, extension = name.rpartition(".")
    if "%" in name or ".." in name or "\\" in name:  # checked first: '..%2F' also starts like a hidden file
        why = f"{name!r} looks like an encoded path (a landed file's name never holds one)"
    elif name.startswith("."):
        why = "a hidden file"
    elif not dot:
        why = "no .parquet extension"
    elif extension.lower() == "parquet" and extension != "parquet":
        why = f"the extension '.{extension}' must be '.parquet' in lower case"
    elif extension != "parquet":
        why = f"not a parquet file (extension '.{extension}')"
    elif any(c.isspace() for c in stem):
        why = f"{stem!r} has white space"
    elif folder == REFERENCE_FOLDER:
        why = f"{stem!r} is not a table name (lower-case letters, digits and _)"
    else:
        why = f"{stem!r} is not a month of the form YYYY-MM"
    expected = f"{folder}/<table>.parquet" if folder == REFERENCE_FOLDER else f"{folder}/<YYYY-MM>.parquet"
    return f"{why}; expected {expected}"


def _meant_for(folder: str, name: str) -> str | None:
    """The table a misnamed file in ``folder`` was most likely meant for."""
    if folder != REFERENCE_FOLDER:
        return folder
    guess = name.strip().lower().partition(".")[0].strip()
    return guess if REFERENCE_STEM.fullmatch(guess) else None


def _survey(
    landing_dir: Path, tables: Collection[str] | None = None
) -> tuple[list[tuple[str, str | None, Path]], list[MisnamedFile]]:
    """Every file of the landing zone, split into batches that follow the layout (``(table, month, path)``) and
    misnamed files with the reason. ``write_atomic``'s temporary files (a write in flight) are neither.

    Args:
        tables: the known tables; when given, a folder or reference file of another name is misnamed too.
    """
    entries: list[tuple[str, str | None, Path]] = []
    misnamed: list[MisnamedFile] = []
    if not landing_dir.exists():
        return entries, misnamed

    def report(path: Path, table: str | None, reason: str, unreadable: bool = False) -> None:
        misnamed.append(MisnamedFile(path, path.relative_to(landing_dir).as_posix(), table, reason, unreadable))

    layout = "batches land as <table>/<YYYY-MM>.parquet or reference/<table>.parquet"
    for top in sorted(landing_dir.iterdir()):
        if TEMPORARY_NAME.fullmatch(top.name):
            continue
        if not top.is_dir():
            report(top, None, f"a file outside any table folder; {layout}")
            continue
        if top.name.startswith("."):
            report(top, None, f"a hidden folder; {layout}")
            continue
        if not REFERENCE_STEM.fullmatch(top.name):  # table names are lower-case identifiers (they name DuckDB tables)
            report(top, None, f"folder {top.name!r} is not a table name (lower-case letters, digits and _); {layout}")
            continue
        if tables is not None and top.name != REFERENCE_FOLDER and top.name not in tables:
            report(top, None, f"folder {top.name!r} is not a table of any feed (known: {', '.join(sorted(tables))})")
            continue
        names = {p.name for p in top.iterdir()}
        for path in sorted(top.iterdir()):
            name = path.name
            if TEMPORARY_NAME.fullmatch(name):
                continue
            if path.is_dir():
                if _batch_name_problem(top.name, name) is None:  # e.g. flights/2013-03.parquet/part-0.parquet
                    reason = f"a folder named like a batch inside {top.name}/ (a dataset written as a folder of parts?)"
                    report(path, _meant_for(top.name, name), f"{reason}: land it as one file; {layout}")
                else:
                    report(path, _meant_for(top.name, name), f"a folder inside {top.name}/; {layout}")
                continue
            batch_name = name.removesuffix(CHECKSUM_SUFFIX)
            problem = _batch_name_problem(top.name, batch_name)
            if name.endswith(CHECKSUM_SUFFIX):  # a checksum file: fine beside its (well-named) batch
                if problem is not None:
                    report(path, _meant_for(top.name, batch_name), f"the checksum file of a misnamed batch: {problem}")
                elif batch_name not in names:
                    report(path, _meant_for(top.name, batch_name), f"a checksum file without its batch {batch_name}")
                continue
            if problem is not None:
                report(path, _meant_for(top.name, name), problem)
                continue
            stem = name.removesuffix(BATCH_SUFFIX)
            if not path.is_file() or not os.access(path, os.R_OK):
                # reported, not raised: one such file stopped the landing sensor's every tick, every month with it
                why = "a link to nothing" if path.is_symlink() and not path.exists() else "the platform may not read it"
                meant = stem if top.name == REFERENCE_FOLDER else top.name
                report(path, meant, f"unreadable ({why}): give it read permission or land it again", unreadable=True)
                continue
            if top.name != REFERENCE_FOLDER:
                entries.append((top.name, stem, path))
            elif tables is not None and stem not in tables:
                report(path, None, f"{stem!r} is not a table of any feed (known: {', '.join(sorted(tables))})")
            else:
                entries.append((stem, None, path))
    return entries, misnamed


def _walk_layout(landing_dir: Path) -> list[tuple[str, str | None, Path]]:
    """``(table, month, path)`` of every file that follows the layout (:func:`misnamed_files` lists the others)."""
    return _survey(landing_dir)[0]


def misnamed_files(landing_dir: Path, tables: Collection[str] | None = None) -> list[MisnamedFile]:
    """Every file (or folder) of the landing zone whose name does not follow the layout, with the reason: such a file
    is never ingested, so it must be reported rather than skipped in silence.

    Args:
        tables: the feeds' tables; when given, a folder or reference file named after no table is reported too.
    """
    return _survey(landing_dir, tables)[1]


def scan_landing(landing_dir: Path) -> list[LandedFile]:
    """Every landed parquet file with the sha256 of its current bytes (computed here: the ingest step compares them
    with the checksum files)."""
    scanned = []
    for table, month, path in _walk_layout(landing_dir):
        try:
            scanned.append(_scanned(table, month, path))
        except FileNotFoundError:  # removed since the listing: the next scan says what is there then
            continue
    return scanned


def _scanned(table: str, month: str | None, path: Path) -> LandedFile:
    digest, recorded = sha256_file(path), recorded_checksum(path)
    unverified = "" if recorded == digest else (recorded or "no checksum file")
    return LandedFile(table, month, path, digest, unverified)


def find_landed(landing_dir: Path, table: str, month: str | None) -> LandedFile | None:
    """The landed file of ``table`` for ``month`` with its current checksum, or ``None`` when nothing has landed."""
    path = landing_path(landing_dir, table, month)
    if not path.is_file():  # a folder of that name is no batch (misnamed_files reports it)
        return None
    return LandedFile(table, month, path, sha256_file(path))


def unlanded_references(landing_dir: Path, tables: list[str]) -> list[str]:
    """The reference tables of ``tables`` with no landed file: every month's validation and features read them, so no
    month can be built without them."""
    return [table for table in tables if not landing_path(landing_dir, table, None).exists()]


def reference_files(tables: list[str]) -> str:
    """The files to land for the reference ``tables``, as the landing zone names them."""
    return ", ".join(str(landing_path(Path("landing"), table, None)) for table in tables)


def landed_months(landing_dir: Path, tables: list[str] | None = None) -> list[str]:
    """Sorted months for which at least one monthly table (of ``tables``, when given) has landed."""
    return sorted(
        {
            month
            for table, month, _ in _walk_layout(landing_dir)
            if month is not None and (tables is None or table in tables)
        }
    )


def incomplete_months(landing_dir: Path, tables: list[str]) -> dict[str, list[str]]:
    """Landed months that some of ``tables`` (the feeds' monthly tables) have not landed for yet: ``{month: the
    missing tables}``. Such a month is not ready (the landing sensor waits for it, see :func:`plan_refresh`)."""
    landed: dict[str, set[str]] = {}
    for table, month, _ in _walk_layout(landing_dir):
        if month is not None and table in tables:
            landed.setdefault(month, set()).add(table)
    missing = {month: [t for t in tables if t not in have] for month, have in sorted(landed.items())}
    return {month: tables_missing for month, tables_missing in missing.items() if tables_missing}


@dataclass(frozen=True)
class RefreshPlan:
    """What the landing sensor should do: months to (re)build with their run keys, months still incomplete, and the
    new cursor."""

    months_to_run: list[str]
    run_keys: dict[str, str]
    cursor: dict[str, str]
    waiting: list[str]
    reference_changed: bool = False


def plan_refresh(
    files: list[LandedFile], monthly_tables: list[str], reference_tables: list[str], cursor: dict[str, str]
) -> RefreshPlan:
    """Decide which months to refresh from the landed files and the hashes seen last time (the cursor).

    A month is ready once every monthly table and every reference table has landed for it. It is refreshed when it
    is new or when any of its files, or any reference file, changed since the cursor; the same bytes twice request
    nothing. The run key names the month and the hash of its inputs, so one version of a month is requested once.

    Args:
        files: the current landing zone (``scan_landing``).
        monthly_tables / reference_tables: the tables a month needs.
        cursor: ``{relative file name: version}`` (:attr:`LandedFile.version`) from the previous evaluation.

    Returns:
        The plan; its ``cursor`` holds the hashes of all files of ready months and of the reference files.
    """
    current = {f.relative_name: f.version for f in files}
    reference = {f.relative_name: f.version for f in files if f.month is None and f.table in reference_tables}
    months = sorted({f.month for f in files if f.month is not None and f.table in monthly_tables})
    reference_ready = len(reference) == len(reference_tables)
    reference_changed = any(cursor.get(name) != sha for name, sha in reference.items())

    to_run: list[str] = []
    keys: dict[str, str] = {}
    waiting: list[str] = []
    next_cursor = {name: sha for name, sha in cursor.items() if name in current}
    for month in months:
        month_files = {f.relative_name: f.version for f in files if f.month == month and f.table in monthly_tables}
        if len(month_files) < len(monthly_tables) or not reference_ready:
            waiting.append(month)
            continue
        changed = any(cursor.get(name) != sha for name, sha in month_files.items())
        if changed or reference_changed:
            to_run.append(month)
            inputs = sorted({**month_files, **reference}.items())
            # when the inputs landed too: a month corrected and then restored (A, B, A again) is a new landing of
            # A, whose run key must differ from A's first (Dagster requests a run key once)
            landed = max(_landed_at(f) for f in files if f.month in (month, None))
            keys[month] = f"{month}:{sha256_bytes(repr(inputs).encode())[:16]}:{landed}"
        next_cursor.update(month_files)
    # the reference files are consumed by the run of a month only: landed before any month is ready, they stay
    # "changed" until a month's run carries them (else no run would ever ingest them)
    if reference_ready and (to_run or not reference_changed):
        next_cursor.update(reference)
    return RefreshPlan(to_run, keys, next_cursor, waiting, reference_changed and reference_ready and bool(to_run))


def _landed_at(landed: LandedFile) -> int:
    """When a file or its checksum file was last written (ns; 0 when neither is there, e.g. a plan made in a test)."""
    times = []
    for path in (landed.path, checksum_path(landed.path)):
        try:
            times.append(path.stat().st_mtime_ns)
        except OSError:
            continue
    return max(times, default=0)


def month_landed_at(landing_dir: Path, tables: list[str]) -> dict[str, float]:
    """When each month last changed in the landing zone: the newest modification time (epoch seconds) of its files."""
    landed: dict[str, float] = {}
    for table, month, path in _walk_layout(landing_dir):
        if month is not None and table in tables:
            landed[month] = max(landed.get(month, 0.0), path.stat().st_mtime)
    return landed


def stale_months(
    landed_at: dict[str, float], built_at: dict[str, float | None], now: float, max_delay_s: float
) -> list[str]:
    """Months whose data landed more than ``max_delay_s`` ago but were not built since (never, or before it landed),
    each with why."""
    problems = []
    for month, landed in sorted(landed_at.items()):
        built = built_at.get(month)
        if now - landed <= max_delay_s or (built is not None and built >= landed):
            continue
        when = "never built" if built is None else "built before its data last changed"
        problems.append(f"{month}: landed {(now - landed) / 3600:.1f} h ago, {when}")
    return problems
