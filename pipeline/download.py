"""Checksummed, resumable, parallel downloads of a PhysioNet database version.

PhysioNet serves a database version at ``<base>/<db>/<version>/``, with ``SHA256SUMS.txt`` (one
``<sha256> <path>`` line per file) and ``RECORDS`` (one record name per line). This module fetches
the checksum list, then ``RECORDS``, then every file of the selected records (the checksum-list
paths that start with ``<record>.``: header, signal and annotation files) plus the database's
metadata files, into ``<dest_root>/<db>/<version>/`` with PhysioNet's relative paths, so that
``wfdb.rdrecord("<dest_root>/mitdb/1.0.0/100")`` reads the result.

Guarantees
----------
- Every file is checked against ``SHA256SUMS.txt``. A file is written to ``<file>.part`` and moved
  into place (``os.replace``) only once its hash matches; a mismatching download is deleted and
  reported by name, so no file is ever left under its final name unverified.
- Re-running skips files that are present and match their checksum (they are re-hashed locally; no
  request is sent for them). ``SHA256SUMS.txt`` itself is fetched on every run (one request).
- An interrupted transfer leaves its ``.part`` file; the next attempt (a retry within the run, or
  the next run) resumes it with an HTTP ``Range`` request. A server that ignores ``Range`` (answers
  200, as Python's ``http.server`` does) is handled by downloading the whole file again; a resumed
  file that fails its checksum is downloaded once more from scratch before it is reported.
- ``file://`` base URLs read a local copy laid out like PhysioNet (used by the Makefile on machines
  with a local mirror).

Decisions
---------
- Records named in ``RECORDS`` but absent from ``SHA256SUMS.txt`` (a partial mirror), and records
  the checksum list names but none of whose files the server has (every one answers 404: a partial
  mirror that kept PhysioNet's checksum list, as the shared svdb and nstdb copies do) are skipped,
  with one warning giving their number. A record asked for by name (``records=``) that is skipped
  so is an error. A file that ``SHA256SUMS.txt`` lists but the server answers 404 for, while other
  files of its record (or a metadata file) are there, is an error naming it: the record would be
  left incomplete.
- A missing ``RECORDS`` is an error when ``SHA256SUMS.txt`` lists it; when it does not (a mirror
  without one), the records are taken from the headers (``*.hea``) in the checksum list.
- ``requests`` (with urllib3 retries for connection errors and 429/5xx answers) rather than pooch:
  pooch checks hashes and retries, but it neither resumes partial files with ``Range`` nor reads
  ``file://`` URLs, and it fetches one file at a time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from tqdm import tqdm

from pipeline.errors import UserError
from pipeline.transports import CHUNK, FetchError, Transport, make_transport

__all__ = [
    "CHECKSUMS_FILE",
    "DATABASES",
    "RECORDS_FILE",
    "DatabaseSpec",
    "DownloadError",
    "DownloadReport",
    "download_database",
    "parse_checksums",
]

logger = logging.getLogger(__name__)

CHECKSUMS_FILE = "SHA256SUMS.txt"
RECORDS_FILE = "RECORDS"
_PART = ".part"


@dataclass(frozen=True)
class DatabaseSpec:
    """What to fetch from one PhysioNet database.

    Attributes
    ----------
    name : str
        PhysioNet's short name (the URL path segment), e.g. ``"mitdb"``.
    title : str
        Human-readable name.
    default_version : str
        Version fetched when none is given.
    metadata : tuple of str
        Files fetched besides the records, when the checksum list has them.
    record_pattern : str or None
        Regular expression that finds record names in ``RECORDS``; None: one name per line.
    rate_dirs : Mapping[int, str]
        Sampling rate (Hz) -> path prefix of the records at that rate, for databases that
        publish several (PTB-XL: ``records100/``, ``records500/``).
    default_rates : tuple of int
        Rates fetched when none are asked for (all records when empty).
    """

    name: str
    title: str
    default_version: str
    metadata: tuple[str, ...] = ()
    record_pattern: str | None = None
    rate_dirs: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    default_rates: tuple[int, ...] = ()


DATABASES: Mapping[str, DatabaseSpec] = MappingProxyType(
    {
        "mitdb": DatabaseSpec(
            "mitdb", "MIT-BIH Arrhythmia Database", "1.0.0", metadata=("ANNOTATORS",)
        ),
        "ptb-xl": DatabaseSpec(
            "ptb-xl",
            "PTB-XL, a large publicly available electrocardiography dataset",
            "1.0.1",
            metadata=("ptbxl_database.csv", "scp_statements.csv", "LICENSE.txt"),
            # PTB-XL 1.0.1's RECORDS lacks the newline between its last 100 Hz and first 500 Hz
            # record, so names are found by pattern rather than split by line.
            record_pattern=r"records(?:100|500)/\d{5}/\d{5}_(?:lr|hr)",
            rate_dirs=MappingProxyType({100: "records100/", 500: "records500/"}),
            default_rates=(100,),
        ),
        "ptbdb": DatabaseSpec("ptbdb", "PTB Diagnostic ECG Database", "1.0.0"),
        # 128 Hz, leads ECG1/ECG2, 78 half-hour records (beat annotations .atr)
        "svdb": DatabaseSpec(
            "svdb",
            "MIT-BIH Supraventricular Arrhythmia Database",
            "1.0.0",
            metadata=("ANNOTATORS",),
        ),
        # RECORDS names the noise recordings bw, em, ma (360 Hz, 2 channels, 30 min) and the
        # twelve noisy copies of mitdb 118 and 119 (118e24 ... 119e_6); pipeline.noise_stress
        # rebuilds the latter from mitdb and the noise, so a mirror with only bw/em/ma suffices
        "nstdb": DatabaseSpec(
            "nstdb",
            "MIT-BIH Noise Stress Test Database",
            "1.0.0",
            metadata=("ANNOTATORS", "nstdb.txt"),
        ),
    }
)


class DownloadError(UserError):
    """One or more files could not be downloaded and verified; the message names them."""


@dataclass(frozen=True)
class DownloadReport:
    """What :func:`download_database` did.

    Attributes
    ----------
    database, version : str
        The database and version fetched.
    destination : Path
        ``<dest_root>/<db>/<version>``.
    source : str
        The URL (or ``file://`` URL) of the version.
    n_records : int
        Records whose files are now present and verified.
    downloaded : tuple of str
        Relative paths fetched in this run.
    verified : tuple of str
        Relative paths that were already present and matched their checksum.
    not_on_mirror : int
        Records named in ``RECORDS`` but absent from ``SHA256SUMS.txt``, or listed there with
        none of their files on the server (skipped).
    bytes_downloaded : int
        Bytes of record and metadata files received in this run (not counting the checksum list).
    seconds : float
        Wall-clock time of the run.
    """

    database: str
    version: str
    destination: Path
    source: str
    n_records: int
    downloaded: tuple[str, ...]
    verified: tuple[str, ...]
    not_on_mirror: int
    bytes_downloaded: int
    seconds: float

    def summary(self) -> str:
        """One line (two when records were skipped) for the command line."""
        n_files = len(self.downloaded) + len(self.verified)
        line = (
            f"{self.database} {self.version}: {self.n_records} records, {n_files} files verified "
            f"in {self.destination} ({len(self.downloaded)} downloaded, "
            f"{self.bytes_downloaded / 1e6:.1f} MB; {len(self.verified)} already present) "
            f"in {self.seconds:.1f} s"
        )
        if self.not_on_mirror:
            line += (
                f"\n{self.not_on_mirror} records listed in RECORDS are not on the mirror at "
                f"{self.source} (absent from {CHECKSUMS_FILE} or from the server) and were skipped"
            )
        return line


# --------------------------------------------------------------------------- checksum list
_CHECKSUM_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S.*?)\s*$")


def parse_checksums(text: str, source: str = CHECKSUMS_FILE) -> dict[str, str]:
    """Parse a ``sha256sum``-style list: ``<64 hex digits><one or more spaces>[*]<path>``.

    Parameters
    ----------
    text : str
        Content of ``SHA256SUMS.txt``. Blank lines are ignored; one or two spaces (or ``" *"``)
        between hash and path are accepted.
    source : str
        Where the text came from, for error messages.

    Returns
    -------
    dict
        Relative POSIX path -> lower-case hex SHA-256.

    Raises
    ------
    UserError
        On a malformed line (e.g. an HTML page served in place of the list) or a path that would
        leave the destination (absolute, ``..``).
    """
    sums: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        match = _CHECKSUM_LINE.match(raw)
        if match is None:
            excerpt = raw.strip()[:60]
            raise UserError(
                f"{source} line {number} is not '<sha256> <path>': {excerpt!r}; "
                "is the base URL a PhysioNet /files/ URL or a mirror laid out like it?"
            )
        digest, path = match.group(1).lower(), match.group(2)
        parts = PurePosixPath(path).parts
        if path.startswith("/") or "\\" in path or ".." in parts or not parts:
            raise UserError(f"{source} line {number}: unsafe path {path!r}; refusing to download")
        sums[path] = digest
    if not sums:
        raise UserError(f"{source} is empty; is the base URL right?")
    return sums


def _record_of(path: str) -> str:
    """``"patient001/s0010_re.hea"`` -> ``"patient001/s0010_re"``: the path up to the file name's
    first dot (so ``102-0.atr`` belongs to ``102-0``, not ``102``)."""
    head, _, name = path.rpartition("/")
    stem = name.split(".", 1)[0]
    return f"{head}/{stem}" if head else stem


def _index_by_record(checksums: Mapping[str, str]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for path in checksums:
        if "." in path.rpartition("/")[2]:
            index.setdefault(_record_of(path), []).append(path)
    return index


def _sha256_file(path: Path, hasher: hashlib._Hash | None = None) -> str:
    hasher = hasher or hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


# --------------------------------------------------------------------------- one version
class _Fetcher:
    """Fetches files of one database version into ``dest`` through ``.part`` files."""

    def __init__(
        self, transport: Transport, prefix: str, dest: Path, *, retries: int, backoff: float
    ) -> None:
        self.transport = transport
        self.prefix = prefix  # "<db>/<version>/"
        self.dest = dest
        self.retries = retries
        self.backoff = backoff

    def url(self, rel: str) -> str:
        return self.transport.url(self.prefix + rel)

    def ensure(self, rel: str, sha256: str) -> tuple[bool, int]:
        """Make ``dest/rel`` a verified copy. Returns (downloaded?, bytes received)."""
        final = self.dest / rel
        if final.is_file():
            if _sha256_file(final) == sha256:
                return False, 0
            logger.warning(
                "%s: local copy does not match %s; downloading it again", rel, CHECKSUMS_FILE
            )
            final.unlink()
        return True, self.fetch(rel, sha256)

    def fetch(self, rel: str, sha256: str | None) -> int:
        """Download ``rel`` to ``dest/rel`` (via ``.part``); verify it when ``sha256`` is given.

        Returns the number of bytes received. Raises :class:`FetchError` on transfer failures
        and :class:`DownloadError` on a checksum mismatch (the ``.part`` is deleted then).
        """
        final = self.dest / rel
        part = final.with_name(final.name + _PART)
        final.parent.mkdir(parents=True, exist_ok=True)
        if sha256 is None:  # nothing to verify a resumed file against: start afresh
            part.unlink(missing_ok=True)
        attempt, restarted, received = 0, False, 0
        while True:
            offset = part.stat().st_size if part.exists() else 0
            hasher = hashlib.sha256()
            try:
                with self.transport.open(self.prefix + rel, offset) as (chunks, resumed):
                    if resumed:
                        _sha256_file(part, hasher)
                        logger.debug("%s: resuming after %d bytes", rel, offset)
                    with part.open("ab" if resumed else "wb") as out:
                        for chunk in chunks:
                            out.write(chunk)
                            hasher.update(chunk)
                            received += len(chunk)
            except FetchError as err:
                if err.not_found and sha256 is not None:
                    raise FetchError(
                        f"{rel} is listed in {CHECKSUMS_FILE} but missing on the server "
                        f"({err}); the mirror is incomplete",
                        not_found=True,
                    ) from None
                if err.retryable and attempt < self.retries:
                    attempt += 1
                    logger.info("%s: %s; retry %d of %d", rel, err, attempt, self.retries)
                    time.sleep(self.backoff * 2 ** (attempt - 1))
                    continue
                if err.retryable:
                    raise FetchError(
                        f"{rel}: {err}; the partial file is kept as {part.name} and the next "
                        "run resumes it",
                        retryable=True,
                    ) from None
                raise
            digest = hasher.hexdigest()
            if sha256 is None or digest == sha256:
                os.replace(part, final)
                return received
            size = part.stat().st_size
            part.unlink()
            if offset and not restarted:  # a stale prefix from an earlier run may be at fault
                restarted = True
                logger.warning("%s: resumed download failed its checksum; starting afresh", rel)
                continue
            raise DownloadError(
                f"{rel}: SHA-256 mismatch ({size} bytes received, hash {digest[:12]}…, "
                f"{CHECKSUMS_FILE} says {sha256[:12]}…); the file was deleted. The mirror's "
                f"copy at {self.url(rel)} is corrupt or truncated"
            )


# --------------------------------------------------------------------------- entry point
def _spec(database: str) -> DatabaseSpec:
    spec = DATABASES.get(database.strip().lower())
    if spec is None:
        raise UserError(f"unknown database {database!r}; known: {', '.join(sorted(DATABASES))}")
    return spec


def _rates(spec: DatabaseSpec, sampling_rates: Sequence[int] | None) -> tuple[int, ...]:
    if sampling_rates is None:
        return spec.default_rates
    rates = tuple(dict.fromkeys(int(r) for r in sampling_rates))
    if not spec.rate_dirs:
        raise UserError(f"{spec.name} publishes one sampling rate; leave out the rate option")
    unknown = [r for r in rates if r not in spec.rate_dirs]
    if unknown or not rates:
        raise UserError(
            f"{spec.name} has no records at {unknown or rates} Hz; "
            f"choose from {sorted(spec.rate_dirs)}"
        )
    return rates


def _parse_records(spec: DatabaseSpec, text: str) -> list[str]:
    if spec.record_pattern:
        names = re.findall(spec.record_pattern, text)
    else:
        names = [line.strip() for line in text.splitlines()]
    return list(dict.fromkeys(n for n in names if n and not n.startswith("#")))


def _select(
    spec: DatabaseSpec,
    listed: list[str],
    index: Mapping[str, list[str]],
    requested: Sequence[str] | None,
    rates: tuple[int, ...],
    source: str,
) -> tuple[list[str], int]:
    """Records to fetch, and how many listed records are absent from the checksum list."""
    if requested is None:
        if rates:
            prefixes = tuple(spec.rate_dirs[r] for r in rates)
            listed = [r for r in listed if r.startswith(prefixes)]
        chosen = [r for r in listed if r in index]
        missing = len(listed) - len(chosen)
        if not chosen:
            raise UserError(
                f"none of the {len(listed)} records in {RECORDS_FILE} at {source} "
                f"are in its {CHECKSUMS_FILE}; nothing to download"
            )
        return chosen, missing

    listed_set = set(listed)
    by_basename: dict[str, list[str]] = {}
    for name in listed:
        by_basename.setdefault(name.rpartition("/")[2], []).append(name)
    chosen = []
    unknown: list[str] = []
    absent: list[str] = []
    for name in dict.fromkeys(r.strip() for r in requested if r.strip()):
        if name in listed_set:
            record = name
        elif len(by_basename.get(name, [])) == 1:
            record = by_basename[name][0]
        else:
            unknown.append(name)
            continue
        (chosen if record in index else absent).append(record)
    if unknown:
        examples = ", ".join(listed[:3])
        raise UserError(
            f"unknown record(s) for {spec.name}: {', '.join(unknown)}; {RECORDS_FILE} lists "
            f"{len(listed)} records (e.g. {examples})"
        )
    if absent:
        raise UserError(
            f"record(s) {', '.join(absent)} are listed in {RECORDS_FILE} but not in "
            f"{CHECKSUMS_FILE} at {source}: this mirror does not have them"
        )
    if not chosen:
        raise UserError("no records given")
    return list(dict.fromkeys(chosen)), 0


def download_database(
    database: str,
    *,
    dest_root: Path,
    base_url: str,
    version: str | None = None,
    records: Sequence[str] | None = None,
    workers: int = 8,
    sampling_rates: Sequence[int] | None = None,
    progress: bool | None = None,
    retries: int = 3,
    backoff: float = 0.5,
    timeout: float = 30.0,
) -> DownloadReport:
    """Download one version of a PhysioNet database, every file verified by SHA-256.

    Parameters
    ----------
    database : str
        A key of :data:`DATABASES` (``mitdb``, ``ptb-xl``, ``ptbdb``, ``svdb``, ``nstdb``).
    dest_root : Path
        Files go to ``dest_root/<database>/<version>/<path as on PhysioNet>``.
    base_url : str
        ``https://physionet.org/files/``, a mirror laid out like it, or a ``file://`` URL.
    version : str, optional
        Database version; default :attr:`DatabaseSpec.default_version`.
    records : sequence of str, optional
        Only these records (names as in ``RECORDS``; for PTB-XL the file name alone, e.g.
        ``00001_lr``, is enough). Default: every record listed at the selected rates.
    workers : int
        Parallel transfers.
    sampling_rates : sequence of int, optional
        PTB-XL only: which record sets to fetch (100 and/or 500 Hz); default 100 Hz.
        Ignored when ``records`` is given.
    progress : bool, optional
        Show a tqdm bar of files on stderr; None: only when stderr is a terminal.
    retries : int
        Extra attempts after a failed connection, a dropped transfer or a 429/5xx answer.
    backoff : float
        Seconds before the first retry; doubled at each further one.
    timeout : float
        Seconds to wait for a connection or for data.

    Returns
    -------
    DownloadReport

    Raises
    ------
    UserError
        Unknown database, record or rate; unreachable host; HTTP error on the checksum list or
        ``RECORDS``. :class:`DownloadError` (a UserError) names the files that could not be
        downloaded or failed their checksum; files that succeeded stay in place.
    """
    started = time.perf_counter()
    spec = _spec(database)
    version = (version or spec.default_version).strip()
    if not re.fullmatch(r"[0-9A-Za-z][0-9A-Za-z._-]*", version) or ".." in version:
        raise UserError(f"invalid version {version!r}; e.g. {spec.default_version}")
    if workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    rates = _rates(spec, sampling_rates) if records is None else ()
    if retries < 0:
        raise UserError(f"retries must be >= 0, got {retries}")

    transport = make_transport(base_url, retries=retries, backoff=backoff, timeout=timeout)
    dest = Path(dest_root) / spec.name / version
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {dest}: {err.strerror or err}") from None
    fetcher = _Fetcher(transport, f"{spec.name}/{version}/", dest, retries=retries, backoff=backoff)
    source = fetcher.url("")
    try:
        return _download(spec, version, fetcher, source, records, rates, workers, progress, started)
    finally:
        transport.close()


def _download(
    spec: DatabaseSpec,
    version: str,
    fetcher: _Fetcher,
    source: str,
    records: Sequence[str] | None,
    rates: tuple[int, ...],
    workers: int,
    progress: bool | None,
    started: float,
) -> DownloadReport:
    dest = fetcher.dest
    # 1. the checksum list, fetched on every run: it defines what a complete download is
    try:
        fetcher.fetch(CHECKSUMS_FILE, None)
    except FetchError as err:
        if err.not_found:
            raise UserError(
                f"{spec.name} version {version} not found: no {CHECKSUMS_FILE} at "
                f"{fetcher.url(CHECKSUMS_FILE)}; check the version (default "
                f"{spec.default_version}) and that the base URL is PhysioNet's /files/ or a "
                "mirror laid out like it"
            ) from None
        raise UserError(f"cannot download {CHECKSUMS_FILE}: {err}") from None
    checksums = parse_checksums(
        (dest / CHECKSUMS_FILE).read_text(encoding="utf-8", errors="replace"),
        source=fetcher.url(CHECKSUMS_FILE),
    )
    index = _index_by_record(checksums)

    # 2. RECORDS: verified when the checksum list has it
    downloaded: list[str] = []
    verified: list[str] = []
    n_bytes = 0
    try:
        if RECORDS_FILE in checksums:
            got, n = fetcher.ensure(RECORDS_FILE, checksums[RECORDS_FILE])
            (downloaded if got else verified).append(RECORDS_FILE)
            n_bytes += n
        else:
            fetcher.fetch(RECORDS_FILE, None)
        listed = _parse_records(spec, (dest / RECORDS_FILE).read_text(encoding="utf-8"))
    except FetchError as err:
        if not (err.not_found and RECORDS_FILE not in checksums):
            raise UserError(f"cannot download {RECORDS_FILE}: {err}") from None
        listed = sorted(r for r, paths in index.items() if any(p.endswith(".hea") for p in paths))
        logger.warning(
            "no %s at %s; taking the %d records with a header (.hea) in %s",
            RECORDS_FILE,
            fetcher.url(RECORDS_FILE),
            len(listed),
            CHECKSUMS_FILE,
        )

    # 3. which files
    chosen, not_in_sums = _select(spec, listed, index, records, rates, source)
    n_listed = len(chosen) + not_in_sums
    plan = [name for name in spec.metadata if name in checksums]
    record_of: dict[str, str] = {}
    for record in chosen:
        for rel in sorted(index[record]):
            record_of.setdefault(rel, record)
            plan.append(rel)
    plan = [p for p in dict.fromkeys(plan) if p != RECORDS_FILE]
    logger.info(
        "%s %s: %d records, %d files from %s", spec.name, version, len(chosen), len(plan), source
    )

    # 4. fetch in parallel; a per-file failure does not stop the others (they can be kept),
    #    an unreachable host does
    failures: list[str] = []
    not_found: dict[str, list[str]] = {}  # record -> its files the server answered 404 for
    fatal: str | None = None
    disable = None if progress is None else not progress
    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="download") as pool,
        tqdm(total=len(plan), unit="file", desc=f"{spec.name} {version}", disable=disable) as bar,
    ):
        futures: dict[Future[tuple[bool, int]], str] = {
            pool.submit(fetcher.ensure, rel, checksums[rel]): rel for rel in plan
        }
        try:
            for future in as_completed(futures):
                rel = futures[future]
                bar.update(1)
                try:
                    got, n = future.result()
                except CancelledError:
                    continue
                except (FetchError, DownloadError) as err:
                    if isinstance(err, FetchError) and err.not_found and rel in record_of:
                        not_found.setdefault(record_of[rel], []).append(str(err))
                        continue
                    failures.append(str(err))
                    if isinstance(err, FetchError) and err.fatal and fatal is None:
                        fatal = str(err)
                        # Future.cancel (not shutdown(cancel_futures=True), whose cancelled
                        # futures never reach as_completed): skip the transfers not yet started
                        for other in futures:
                            other.cancel()
                    continue
                except OSError as err:  # e.g. a full disk
                    failures.append(f"{rel}: {err.strerror or err}")
                    continue
                (downloaded if got else verified).append(rel)
                n_bytes += n
                bar.set_postfix_str(f"{n_bytes / 1e6:.1f} MB", refresh=False)
        except BaseException:  # Ctrl-C: start no new transfer; running ones finish their file
            pool.shutdown(wait=False, cancel_futures=True)
            raise

    if fatal is not None:
        raise UserError(fatal)
    # a record none of whose files the server has is absent from this mirror; one with only
    # some of them missing is an incomplete record, an error
    n_files = {r: 0 for r in not_found}
    for record in record_of.values():
        if record in n_files:
            n_files[record] += 1
    absent = [r for r in chosen if r in not_found and len(not_found[r]) == n_files[r]]
    for record, messages in not_found.items():
        if len(messages) < n_files[record]:
            failures.extend(messages)
    if absent and records is not None:
        raise UserError(
            f"record(s) {', '.join(absent)} are listed in {CHECKSUMS_FILE} but the server at "
            f"{source} has none of their files: this mirror does not have them"
        )
    if absent and len(absent) == len(chosen):
        raise UserError(
            f"the server at {source} has none of the files of the {len(chosen)} records in "
            f"{CHECKSUMS_FILE}; nothing was downloaded"
        )
    not_on_mirror = not_in_sums + len(absent)
    if not_on_mirror:
        logger.warning(
            "%d of %d records listed in %s are not on the mirror at %s (%d absent from %s, "
            "%d with no files on the server; a partial mirror); skipped them",
            not_on_mirror,
            n_listed,
            RECORDS_FILE,
            source,
            not_in_sums,
            CHECKSUMS_FILE,
            len(absent),
        )
    if failures:
        for message in failures:
            logger.debug("failed: %s", message)
        more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
        raise DownloadError(
            f"{len(failures)} of {len(plan)} files failed{more}: " + " | ".join(failures[:3])
        )
    return DownloadReport(
        database=spec.name,
        version=version,
        destination=dest,
        source=source,
        n_records=len(chosen) - len(absent),
        downloaded=tuple(downloaded),
        verified=tuple(verified),
        not_on_mirror=not_on_mirror,
        bytes_downloaded=n_bytes,
        seconds=time.perf_counter() - started,
    )
