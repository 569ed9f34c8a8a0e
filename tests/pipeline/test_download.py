"""Tests of pipeline.download against real HTTP servers on 127.0.0.1 and real WFDB files.

Most tests build a tiny mirror in tmp_path (so they run in any clone); the ones that read the
shared PhysioNet mirror use the fixtures of tests/conftest.py and skip when it is absent.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import logging
import random
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import wfdb
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.download import (
    CHECKSUMS_FILE,
    DownloadError,
    download_database,
    parse_checksums,
)
from pipeline.errors import UserError

pytestmark = pytest.mark.timeout(120)  # a hung transfer fails the test instead of the suite

FAST: dict[str, Any] = {"retries": 0, "backoff": 0.0, "timeout": 5.0, "progress": False}


# --------------------------------------------------------------------------- servers
class _LoggingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory and records ``(path, Range header)`` of every GET on the server."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))  # type: ignore[attr-defined]
        self.handle_get()

    def handle_get(self) -> None:
        super().do_GET()

    def _file(self) -> Path | None:
        path = Path(self.translate_path(self.path))
        return path if path.is_file() else None


class _RangeHandler(_LoggingHandler):
    """Honours ``Range: bytes=N-`` (206), as PhysioNet does; ``http.server`` itself does not.

    ``server.drop`` maps a URL path to how many more responses for it are cut off halfway
    (full Content-Length announced, then the connection closed).
    """

    def handle_get(self) -> None:
        path = self._file()
        if path is None:
            super().handle_get()
            return
        data = path.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and int(match.group(1)) >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        if match:
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        drops: dict[str, int] = self.server.drop  # type: ignore[attr-defined]
        if drops.get(self.path, 0) > 0:
            drops[self.path] -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class _NoLengthTruncatingHandler(_LoggingHandler):
    """Answers 200 without Content-Length and sends half of ``.dat`` files, then closes."""

    def handle_get(self) -> None:
        path = self._file()
        if path is None or path.suffix != ".dat":
            super().handle_get()
            return
        data = path.read_bytes()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True


class _VanishingHandler(_LoggingHandler):
    """Closes the listening socket once RECORDS is served: the host goes away mid-run."""

    def handle_get(self) -> None:
        super().handle_get()
        if self.path.endswith("/RECORDS"):
            self.wfile.flush()
            self.server.socket.close()


class _StatusHandler(_LoggingHandler):
    status = 500

    def handle_get(self) -> None:
        self.send_error(self.status)


@contextmanager
def _serve(
    root: Path, handler: type[_LoggingHandler] = _LoggingHandler, drop: dict[str, int] | None = None
) -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    server.requests = []  # type: ignore[attr-defined]
    server.drop = drop or {}  # type: ignore[attr-defined]

    def serve() -> None:
        # OSError / ValueError: the listening socket was closed (_VanishingHandler)
        with contextlib.suppress(OSError, ValueError):
            server.serve_forever(0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server.requests  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- tiny mirrors
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_sums(version_dir: Path, names: list[str]) -> None:
    # alternate one and two spaces, as the shared mirror's lists do
    lines = [
        f"{_sha((version_dir / n).read_bytes())}{' ' if i % 2 else '  '}{n}"
        for i, n in enumerate(sorted(names))
    ]
    (version_dir / CHECKSUMS_FILE).write_text("\n".join(lines) + "\n")


@pytest.fixture
def tiny_mirror(tmp_path: Path) -> Path:
    """``<root>/mitdb/1.0.0/`` with a real WFDB record ``100`` (2 leads, 360 Hz, 2 s) and record
    ``101`` of random bytes (300 kB ``.dat``), ``RECORDS`` and ``SHA256SUMS.txt``."""
    root = tmp_path / "mirror"
    version_dir = root / "mitdb" / "1.0.0"
    version_dir.mkdir(parents=True)
    t = np.arange(720) / 360.0
    signal = np.stack([np.sin(2 * np.pi * t), 0.5 * np.cos(2 * np.pi * t)], axis=1)
    wfdb.wrsamp(
        "100", fs=360, units=["mV", "mV"], sig_name=["MLII", "V5"], p_signal=signal,
        fmt=["212", "212"], write_dir=str(version_dir),
    )  # fmt: skip
    wfdb.wrann("100", "atr", np.array([100, 460]), ["N", "V"], write_dir=str(version_dir))
    rng = random.Random(0)
    (version_dir / "101.hea").write_text("101 2 360 1000\n")
    (version_dir / "101.dat").write_bytes(rng.randbytes(300_000))
    (version_dir / "RECORDS").write_text("100\n101\n")
    (version_dir / "ANNOTATORS").write_text("atr\treference beat annotations\n")
    _write_sums(version_dir, ["100.hea", "100.dat", "100.atr", "101.hea", "101.dat", "RECORDS",
                              "ANNOTATORS"])  # fmt: skip
    return root


def _files(directory: Path) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- tiny-mirror tests
def test_download_verifies_and_rerun_sends_no_request_for_verified_files(
    tiny_mirror: Path, tmp_path: Path
) -> None:
    src = tiny_mirror / "mitdb" / "1.0.0"
    dest_root = tmp_path / "raw"
    with _serve(tiny_mirror) as (url, log):
        report = download_database("mitdb", dest_root=dest_root, base_url=url, workers=4, **FAST)
        first = list(log)
        log.clear()
        again = download_database("mitdb", dest_root=dest_root, base_url=url, **FAST)

    dest = dest_root / "mitdb" / "1.0.0"
    expected = {"100.hea", "100.dat", "100.atr", "101.hea", "101.dat", "RECORDS", "ANNOTATORS"}
    assert _files(dest) == expected | {CHECKSUMS_FILE}
    for name in expected:
        assert (dest / name).read_bytes() == (src / name).read_bytes(), name
    assert report.n_records == 2 and set(report.downloaded) == expected
    assert report.bytes_downloaded == sum((src / n).stat().st_size for n in expected)
    assert len(first) == len(expected) + 1  # every file once, plus the checksum list
    record = wfdb.rdrecord(str(dest / "100"))
    assert (
        record.fs == 360 and record.sig_name == ["MLII", "V5"] and record.p_signal.shape == (720, 2)
    )
    assert list(wfdb.rdann(str(dest / "100"), "atr").symbol) == ["N", "V"]

    # the re-run asks only for the checksum list
    assert log == [("/mitdb/1.0.0/SHA256SUMS.txt", None)]
    assert again.downloaded == () and set(again.verified) == expected
    assert again.bytes_downloaded == 0
    assert "0 downloaded" in again.summary() and "7 already present" in again.summary()


def test_file_url_base(tiny_mirror: Path, tmp_path: Path) -> None:
    report = download_database(
        "mitdb", dest_root=tmp_path / "raw", base_url=tiny_mirror.as_uri(), records=["100"], **FAST
    )
    dest = tmp_path / "raw" / "mitdb" / "1.0.0"
    assert _files(dest) == {
        "100.hea",
        "100.dat",
        "100.atr",
        "RECORDS",
        "ANNOTATORS",
        CHECKSUMS_FILE,
    }
    assert report.n_records == 1
    assert wfdb.rdrecord(str(dest / "100")).p_signal.shape == (720, 2)


def test_corrupted_file_on_mirror_is_named_and_not_left_in_place(
    tiny_mirror: Path, tmp_path: Path
) -> None:
    bad = tiny_mirror / "mitdb" / "1.0.0" / "101.dat"
    data = bytearray(bad.read_bytes())
    data[1000] ^= 0xFF  # one flipped byte; SHA256SUMS.txt still has the original hash
    bad.write_bytes(bytes(data))
    dest = tmp_path / "raw" / "mitdb" / "1.0.0"
    with _serve(tiny_mirror) as (url, _), pytest.raises(DownloadError, match=r"101\.dat: SHA-256"):
        download_database("mitdb", dest_root=tmp_path / "raw", base_url=url, **FAST)
    assert not (dest / "101.dat").exists() and not (dest / "101.dat.part").exists()
    sums = parse_checksums((dest / CHECKSUMS_FILE).read_text())
    for name in ["100.hea", "100.dat", "100.atr", "101.hea", "RECORDS"]:  # the rest is fine
        assert _sha((dest / name).read_bytes()) == sums[name]


def test_corrupted_local_copy_is_downloaded_again(tiny_mirror: Path, tmp_path: Path) -> None:
    with _serve(tiny_mirror) as (url, log):
        download_database("mitdb", dest_root=tmp_path / "raw", base_url=url, **FAST)
        local = tmp_path / "raw" / "mitdb" / "1.0.0" / "100.dat"
        local.write_bytes(b"garbage")
        log.clear()
        report = download_database("mitdb", dest_root=tmp_path / "raw", base_url=url, **FAST)
    assert report.downloaded == ("100.dat",)
    assert [p for p, _ in log] == ["/mitdb/1.0.0/SHA256SUMS.txt", "/mitdb/1.0.0/100.dat"]
    assert local.read_bytes() == (tiny_mirror / "mitdb" / "1.0.0" / "100.dat").read_bytes()


def test_truncated_answer_without_length_is_a_checksum_error(
    tiny_mirror: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "raw" / "mitdb" / "1.0.0"
    with (
        _serve(tiny_mirror, _NoLengthTruncatingHandler) as (url, _),
        pytest.raises(DownloadError, match=r"2 of 6 files failed.*\.dat: SHA-256 mismatch"),
    ):
        download_database("mitdb", dest_root=tmp_path / "raw", base_url=url, **FAST)
    assert not list(dest.glob("*.dat*"))
    assert (dest / "100.hea").exists() and (dest / "101.hea").exists()


def test_part_file_is_resumed_with_range(tiny_mirror: Path, tmp_path: Path) -> None:
    src = tiny_mirror / "mitdb" / "1.0.0" / "101.dat"
    dest = tmp_path / "raw" / "mitdb" / "1.0.0"
    dest.mkdir(parents=True)
    (dest / "101.dat.part").write_bytes(src.read_bytes()[:123_456])  # left by an earlier run
    with _serve(tiny_mirror, _RangeHandler) as (url, log):
        report = download_database(
            "mitdb", dest_root=tmp_path / "raw", base_url=url, records=["101"], **FAST
        )
    assert ("/mitdb/1.0.0/101.dat", "bytes=123456-") in log
    assert (dest / "101.dat").read_bytes() == src.read_bytes()
    assert not (dest / "101.dat.part").exists()
    sizes = {n: (src.parent / n).stat().st_size for n in ("101.hea", "RECORDS", "ANNOTATORS")}
    assert report.bytes_downloaded == sum(sizes.values()) + src.stat().st_size - 123_456


def test_part_file_with_server_ignoring_range_is_downloaded_whole(
    tiny_mirror: Path, tmp_path: Path
) -> None:
    src = tiny_mirror / "mitdb" / "1.0.0" / "101.dat"
    dest = tmp_path / "raw" / "mitdb" / "1.0.0"
    dest.mkdir(parents=True)
    (dest / "101.dat.part").write_bytes(src.read_bytes()[:5000])
    with _serve(tiny_mirror) as (url, log):  # http.server: 200 and the whole file
        download_database(
            "mitdb", dest_root=tmp_path / "raw", base_url=url, records=["101"], **FAST
        )
    assert ("/mitdb/1.0.0/101.dat", "bytes=5000-") in log
    assert (dest / "101.dat").read_bytes() == src.read_bytes()


def test_stale_part_with_wrong_bytes_is_restarted(tiny_mirror: Path, tmp_path: Path) -> None:
    src = tiny_mirror / "mitdb" / "1.0.0" / "101.dat"
    dest = tmp_path / "raw" / "mitdb" / "1.0.0"
    dest.mkdir(parents=True)
    (dest / "101.dat.part").write_bytes(b"\0" * 5000)  # not a prefix of the real file
    with _serve(tiny_mirror, _RangeHandler) as (url, log):
        download_database(
            "mitdb", dest_root=tmp_path / "raw", base_url=url, records=["101"], **FAST
        )
    dat_requests = [r for p, r in log if p.endswith("101.dat")]
    assert dat_requests == ["bytes=5000-", None]  # resumed, failed its checksum, started afresh
    assert (dest / "101.dat").read_bytes() == src.read_bytes()


def test_dropped_connection_fails_then_rerun_resumes(tiny_mirror: Path, tmp_path: Path) -> None:
    src = tiny_mirror / "mitdb" / "1.0.0" / "101.dat"
    dest = tmp_path / "raw" / "mitdb" / "1.0.0"
    with _serve(tiny_mirror, _RangeHandler, drop={"/mitdb/1.0.0/101.dat": 1}) as (url, log):
        with pytest.raises(
            DownloadError, match=r"101\.dat.*connection lost after 150000 of 300000"
        ):
            download_database("mitdb", dest_root=tmp_path / "raw", base_url=url, **FAST)
        assert not (dest / "101.dat").exists()
        assert (dest / "101.dat.part").read_bytes() == src.read_bytes()[:150_000]
        log.clear()
        report = download_database("mitdb", dest_root=tmp_path / "raw", base_url=url, **FAST)
    assert report.downloaded == ("101.dat",)
    assert ("/mitdb/1.0.0/101.dat", "bytes=150000-") in log
    assert (dest / "101.dat").read_bytes() == src.read_bytes()


def test_dropped_connection_is_retried_within_the_run(tiny_mirror: Path, tmp_path: Path) -> None:
    src = tiny_mirror / "mitdb" / "1.0.0" / "101.dat"
    with _serve(tiny_mirror, _RangeHandler, drop={"/mitdb/1.0.0/101.dat": 2}) as (url, log):
        download_database(
            "mitdb", dest_root=tmp_path / "raw", base_url=url, **{**FAST, "retries": 2}
        )
    assert [r for p, r in log if p.endswith("101.dat")] == [None, "bytes=150000-", "bytes=225000-"]
    assert (tmp_path / "raw" / "mitdb" / "1.0.0" / "101.dat").read_bytes() == src.read_bytes()


def test_checksum_listed_file_missing_on_server_is_named(tiny_mirror: Path, tmp_path: Path) -> None:
    (tiny_mirror / "mitdb" / "1.0.0" / "100.atr").unlink()
    with _serve(tiny_mirror) as (url, _), pytest.raises(DownloadError) as err:
        download_database("mitdb", dest_root=tmp_path / "raw", base_url=url, **FAST)
    assert "100.atr is listed in SHA256SUMS.txt but missing on the server" in str(err.value)
    assert "HTTP 404" in str(err.value)


def test_partial_mirror_skips_unlisted_records_with_one_warning(
    tiny_mirror: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tiny_mirror / "mitdb" / "1.0.0" / "RECORDS").write_text("100\n101\n102\n103\n")
    _write_sums(tiny_mirror / "mitdb" / "1.0.0", ["100.hea", "100.dat", "100.atr", "101.hea",
                                                   "101.dat", "RECORDS"])  # fmt: skip
    with _serve(tiny_mirror) as (url, _), caplog.at_level(logging.WARNING, "pipeline.download"):
        report = download_database("mitdb", dest_root=tmp_path / "raw", base_url=url, **FAST)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("2 of 4 records listed in RECORDS are")
    assert report.n_records == 2 and report.not_on_mirror == 2
    assert "2 records listed in RECORDS are not on the mirror" in report.summary()


def test_records_option(tiny_mirror: Path, tmp_path: Path) -> None:
    with _serve(tiny_mirror) as (url, _):
        report = download_database(
            "mitdb", dest_root=tmp_path / "raw", base_url=url, records=["101"], **FAST
        )
        assert set(report.downloaded) == {"101.hea", "101.dat", "RECORDS", "ANNOTATORS"}
        with pytest.raises(UserError, match=r"unknown record\(s\) for mitdb: 999, abc"):
            download_database(
                "mitdb", dest_root=tmp_path / "raw", base_url=url, records=["100", "999", "abc"]
            )


def test_missing_records_file(tiny_mirror: Path, tmp_path: Path) -> None:
    version_dir = tiny_mirror / "mitdb" / "1.0.0"
    (version_dir / "RECORDS").unlink()
    with _serve(tiny_mirror) as (url, _):
        # listed in the checksum list but 404: the mirror is broken
        with pytest.raises(UserError, match=r"cannot download RECORDS: RECORDS is listed.*404"):
            download_database("mitdb", dest_root=tmp_path / "a", base_url=url, **FAST)
        # not listed (like the shared ptbdb copy): records come from the headers in the list
        _write_sums(version_dir, ["100.hea", "100.dat", "100.atr", "101.hea", "101.dat"])
        report = download_database("mitdb", dest_root=tmp_path / "b", base_url=url, **FAST)
    assert report.n_records == 2 and len(report.downloaded) == 5


def test_ptbxl_layout_rates_and_glued_records_file(tmp_path: Path) -> None:
    version_dir = tmp_path / "mirror" / "ptb-xl" / "1.0.1"
    names = []
    for rate_dir, suffix in (("records100", "lr"), ("records500", "hr")):
        for i in (1, 2):
            for ext in ("hea", "dat"):
                name = f"{rate_dir}/00000/{i:05d}_{suffix}.{ext}"
                (version_dir / name).parent.mkdir(parents=True, exist_ok=True)
                (version_dir / name).write_bytes(f"{name}\n".encode() * 10)
                names.append(name)
    for meta in ("ptbxl_database.csv", "scp_statements.csv", "LICENSE.txt"):
        (version_dir / meta).write_text(f"{meta}\n")
    # as in PTB-XL 1.0.1: no newline between the last 100 Hz and the first 500 Hz record
    (version_dir / "RECORDS").write_text(
        "records100/00000/00001_lr\nrecords100/00000/00002_lr"
        "records500/00000/00001_hr\nrecords500/00000/00002_hr"
    )
    _write_sums(version_dir, [*names, "ptbxl_database.csv", "scp_statements.csv", "LICENSE.txt",
                              "RECORDS"])  # fmt: skip
    base = (tmp_path / "mirror").as_uri()
    default = download_database("ptb-xl", dest_root=tmp_path / "a", base_url=base, **FAST)
    got = _files(tmp_path / "a" / "ptb-xl" / "1.0.1")
    assert default.n_records == 2 and not any(n.startswith("records500") for n in got)
    assert {"ptbxl_database.csv", "scp_statements.csv", "LICENSE.txt"} <= got
    both = download_database(
        "ptb-xl", dest_root=tmp_path / "b", base_url=base, sampling_rates=[500, 100], **FAST
    )
    assert both.n_records == 4
    one = download_database(
        "ptb-xl", dest_root=tmp_path / "c", base_url=base, records=["00002_hr"], **FAST
    )
    assert {n for n in one.downloaded if n.startswith("records")} == {
        "records500/00000/00002_hr.hea",
        "records500/00000/00002_hr.dat",
    }
    with pytest.raises(UserError, match=r"no records at \[250\] Hz; choose from \[100, 500\]"):
        download_database("ptb-xl", dest_root=tmp_path / "d", base_url=base, sampling_rates=[250])


def test_unsafe_path_in_checksum_list_is_refused(tmp_path: Path) -> None:
    version_dir = tmp_path / "mirror" / "mitdb" / "1.0.0"
    version_dir.mkdir(parents=True)
    (version_dir / CHECKSUMS_FILE).write_text(f"{'0' * 64} ../../escape.hea\n")
    with pytest.raises(UserError, match=r"unsafe path '\.\./\.\./escape\.hea'"):
        download_database(
            "mitdb", dest_root=tmp_path / "raw", base_url=(tmp_path / "mirror").as_uri(), **FAST
        )
    assert not (tmp_path / "raw" / "escape.hea").exists()


def test_parse_checksums_formats_and_errors() -> None:
    h = "ab" * 32
    text = f"{h} 100.hea\n{h.upper()}  records100/00000/00001_lr.dat\r\n\n{h} *LICENSE.txt\n"
    assert parse_checksums(text) == {
        "100.hea": h, "records100/00000/00001_lr.dat": h, "LICENSE.txt": h,
    }  # fmt: skip
    with pytest.raises(UserError, match=r"line 1 is not '<sha256> <path>': '<!DOCTYPE html>'"):
        parse_checksums("<!DOCTYPE html>\n<html></html>")
    with pytest.raises(UserError, match="empty"):
        parse_checksums("\n")


# --------------------------------------------------------------------------- user errors
def test_unknown_database(tmp_path: Path) -> None:
    known = "mitdb, nstdb, ptb-xl, ptbdb, svdb"
    with pytest.raises(UserError, match=rf"unknown database 'mitbd'; known: {known}"):
        download_database("mitbd", dest_root=tmp_path, base_url="http://127.0.0.1:1/")


def test_unreachable_host(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/"
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"cannot reach 127\.0\.0\.1:\d+ \(Connection refused\)"):
        download_database("mitdb", dest_root=tmp_path, base_url=url, retries=3, progress=False)
    assert time.perf_counter() - started < 2.0  # refused connections are not retried with backoff


def test_host_lost_mid_run_stops_the_remaining_transfers(tiny_mirror: Path, tmp_path: Path) -> None:
    dest = tmp_path / "raw" / "mitdb" / "1.0.0"
    with (
        _serve(tiny_mirror, _VanishingHandler) as (url, log),
        pytest.raises(UserError, match=r"^cannot reach 127\.0\.0\.1:\d+ \(Connection refused\)"),
    ):
        download_database("mitdb", dest_root=tmp_path / "raw", base_url=url, workers=1, **FAST)
    # A connection the client opened just before the socket closed may still be answered (the
    # metadata file ANNOTATORS, requested right after RECORDS); no record file ever is.
    paths = [p for p, _ in log]
    assert paths[:2] == ["/mitdb/1.0.0/SHA256SUMS.txt", "/mitdb/1.0.0/RECORDS"]
    assert paths[2:] in ([], ["/mitdb/1.0.0/ANNOTATORS"])
    assert _files(dest) - {"ANNOTATORS"} == {CHECKSUMS_FILE, "RECORDS"}


def test_http_500_is_one_clear_error_after_retries(tiny_mirror: Path, tmp_path: Path) -> None:
    with (
        _serve(tiny_mirror, _StatusHandler) as (url, log),
        pytest.raises(UserError, match=r"SHA256SUMS\.txt: HTTP 500 Internal Server Error"),
    ):
        download_database("mitdb", dest_root=tmp_path, base_url=url, retries=2, backoff=0.0)
    assert len(log) == 3  # one request and two retries


def test_wrong_version_is_a_404_with_advice(tiny_mirror: Path, tmp_path: Path) -> None:
    with (
        _serve(tiny_mirror) as (url, _),
        pytest.raises(UserError, match=r"mitdb version 9\.9\.9 not found.*default 1\.0\.0"),
    ):
        download_database("mitdb", dest_root=tmp_path, base_url=url, version="9.9.9", **FAST)


def test_unsupported_base_url(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"expected http://, https:// or file://"):
        download_database("mitdb", dest_root=tmp_path, base_url="ftp://example.org/")


def test_cli_prints_one_error_line_and_exits_2(tmp_path: Path) -> None:
    runner = CliRunner()
    url = f"http://127.0.0.1:{_closed_port()}/"
    for args, expected in [
        (["download", "nosuchdb"], "error: unknown database 'nosuchdb'; known: mitdb, nstdb"),
        (["download", "mitdb", "--base-url", url], "error: cannot download SHA256SUMS.txt"),
    ]:
        result = runner.invoke(app, [*args, "--dest", str(tmp_path), "--no-progress"])
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert result.stderr.startswith(expected)
        assert "Traceback" not in result.output


def test_cli_downloads(tiny_mirror: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["download", "mitdb", "--base-url", tiny_mirror.as_uri(), "--dest", str(tmp_path),
         "--records", "100,101", "--workers", "2", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("mitdb 1.0.0: 2 records, 7 files verified")
    assert (tmp_path / "mitdb" / "1.0.0" / "101.dat").exists()


# --------------------------------------------------------------------------- the shared mirror
def test_mitdb_records_from_the_mirror_read_with_wfdb(
    physionet_mirror: str, mitdb_dir: Path, tmp_path: Path
) -> None:
    report = download_database(
        "mitdb", dest_root=tmp_path, base_url=physionet_mirror, records=["100", "114", "232"],
        workers=3, progress=False,
    )  # fmt: skip
    dest = tmp_path / "mitdb" / "1.0.0"
    assert report.n_records == 3
    assert {"100.hea", "100.dat", "100.atr", "100.xws", "232.atr"} <= set(report.downloaded)
    for name in report.downloaded:
        assert (dest / name).read_bytes() == (mitdb_dir / name).read_bytes(), name
    record = wfdb.rdrecord(str(dest / "114"))
    assert record.fs == 360 and record.p_signal.shape == (650_000, 2)
    assert record.sig_name == ["V5", "MLII"]
    ann = wfdb.rdann(str(dest / "100"), "atr")
    assert len(ann.sample) == 2274


def test_mitdb_rerun_asks_only_for_the_checksum_list(mitdb_dir: Path, tmp_path: Path) -> None:
    with _serve(mitdb_dir.parents[1]) as (url, log):
        download_database("mitdb", dest_root=tmp_path, base_url=url, records=["100", "101"], **FAST)
        assert len(log) == 1 + 1 + 1 + 8  # SHA256SUMS.txt, RECORDS, ANNOTATORS, 2 x 4 files
        log.clear()
        report = download_database(
            "mitdb", dest_root=tmp_path, base_url=url, records=["100", "101"], **FAST
        )
    assert log == [("/mitdb/1.0.0/SHA256SUMS.txt", None)]
    assert report.downloaded == () and len(report.verified) == 10


def test_mitdb_file_url(mitdb_dir: Path, tmp_path: Path) -> None:
    base = mitdb_dir.parents[1].as_uri()
    download_database("mitdb", dest_root=tmp_path, base_url=base, records=["101"], **FAST)
    record = wfdb.rdrecord(str(tmp_path / "mitdb" / "1.0.0" / "101"), sampto=1000)
    assert record.p_signal.shape == (1000, 2)


def test_ptbxl_two_records_and_metadata(
    physionet_mirror: str, ptbxl_dir: Path, tmp_path: Path
) -> None:
    report = download_database(
        "ptb-xl", dest_root=tmp_path, base_url=physionet_mirror,
        records=["records100/00000/00001_lr", "00002_lr"], progress=False,
    )  # fmt: skip
    dest = tmp_path / "ptb-xl" / "1.0.1"
    assert report.n_records == 2
    assert set(report.downloaded) == {
        "ptbxl_database.csv", "scp_statements.csv", "LICENSE.txt", "RECORDS",
        "records100/00000/00001_lr.hea", "records100/00000/00001_lr.dat",
        "records100/00000/00002_lr.hea", "records100/00000/00002_lr.dat",
    }  # fmt: skip
    assert (dest / "ptbxl_database.csv").read_bytes() == (
        ptbxl_dir / "ptbxl_database.csv"
    ).read_bytes()
    record = wfdb.rdrecord(str(dest / "records100" / "00000" / "00002_lr"))
    assert record.fs == 100 and record.p_signal.shape == (1000, 12)


def test_ptbdb_from_the_mirror(physionet_mirror: str, tmp_path: Path) -> None:
    report = download_database("ptbdb", dest_root=tmp_path, base_url=physionet_mirror, **FAST)
    assert report.n_records == 1
    record = wfdb.rdrecord(str(tmp_path / "ptbdb" / "1.0.0" / "patient001" / "s0010_re"))
    assert record.fs == 1000 and record.n_sig == 15


def test_copy_of_real_mitdb_with_one_altered_byte(mitdb_dir: Path, tmp_path: Path) -> None:
    """A copy of two real mitdb records where one signal byte differs: the error names 100.dat."""
    version_dir = tmp_path / "mirror" / "mitdb" / "1.0.0"
    version_dir.mkdir(parents=True)
    for name in ["RECORDS", CHECKSUMS_FILE, "ANNOTATORS", "100.hea", "100.dat", "100.atr",
                 "100.xws", "101.hea", "101.dat", "101.atr", "101.xws"]:  # fmt: skip
        shutil.copy(mitdb_dir / name, version_dir / name)
    with (version_dir / "100.dat").open("r+b") as f:
        f.seek(1234)
        byte = f.read(1)
        f.seek(1234)
        f.write(bytes([byte[0] ^ 1]))
    with (
        _serve(tmp_path / "mirror") as (url, _),
        pytest.raises(DownloadError, match=r"1 of 9 files failed: 100\.dat: SHA-256 mismatch"),
    ):
        download_database(
            "mitdb", dest_root=tmp_path / "raw", base_url=url, records=["100", "101"], **FAST
        )
    dest = tmp_path / "raw" / "mitdb" / "1.0.0"
    assert not (dest / "100.dat").exists() and not (dest / "100.dat.part").exists()
    assert wfdb.rdrecord(str(dest / "101"), sampto=10).p_signal.shape == (10, 2)


# --------------------------------------------------------------------------- svdb and nstdb
def test_record_with_no_files_on_the_server_is_skipped_with_one_warning(
    tiny_mirror: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A partial mirror that kept PhysioNet's checksum list: 101 is listed but not served."""
    version_dir = tiny_mirror / "mitdb" / "1.0.0"
    (version_dir / "RECORDS").write_text("100\n101\n102\n")
    _write_sums(version_dir, ["100.hea", "100.dat", "100.atr", "101.hea", "101.dat", "RECORDS",
                              "ANNOTATORS"])  # fmt: skip
    for name in ("101.hea", "101.dat"):
        (version_dir / name).unlink()
    with _serve(tiny_mirror) as (url, _), caplog.at_level(logging.WARNING, "pipeline.download"):
        report = download_database("mitdb", dest_root=tmp_path / "raw", base_url=url, **FAST)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith("2 of 3 records listed in RECORDS are not on the mirror")
        assert "1 absent from SHA256SUMS.txt, 1 with no files on the server" in warnings[0]
        assert report.n_records == 1 and report.not_on_mirror == 2
        assert "2 records listed in RECORDS are not on the mirror" in report.summary()
        assert _files(tmp_path / "raw" / "mitdb" / "1.0.0") == {
            "100.hea", "100.dat", "100.atr", "RECORDS", "ANNOTATORS", CHECKSUMS_FILE
        }  # fmt: skip
        # asked for by name, a record the server does not have is an error
        with pytest.raises(UserError, match=r"record\(s\) 101 are listed .* has none of their"):
            download_database(
                "mitdb", dest_root=tmp_path / "b", base_url=url, records=["100", "101"], **FAST
            )


def test_no_record_on_the_server_is_an_error(tiny_mirror: Path, tmp_path: Path) -> None:
    version_dir = tiny_mirror / "mitdb" / "1.0.0"
    for name in ("100.hea", "100.dat", "100.atr", "101.hea", "101.dat"):
        (version_dir / name).unlink()
    with _serve(tiny_mirror) as (url, _), pytest.raises(UserError, match="has none of the files"):
        download_database("mitdb", dest_root=tmp_path / "raw", base_url=url, **FAST)


def test_svdb_from_the_mirror_skips_the_records_it_lacks(
    physionet_mirror: str, shared_physionet: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The shared svdb copy holds 52 of the 78 records its RECORDS and checksum list name."""
    source = shared_physionet / "svdb" / "1.0.0"
    on_disk = sorted(p.stem for p in source.glob("*.hea"))
    with caplog.at_level(logging.WARNING, "pipeline.download"):
        report = download_database(
            "svdb", dest_root=tmp_path, base_url=physionet_mirror, workers=4, progress=False
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"{78 - len(on_disk)} of 78 records listed in RECORDS are not on the mirror"
    )
    assert report.n_records == len(on_disk) and report.not_on_mirror == 78 - len(on_disk)
    dest = tmp_path / "svdb" / "1.0.0"
    assert sorted(p.stem for p in dest.glob("*.hea")) == on_disk
    assert not list(dest.rglob("*.part"))
    record = wfdb.rdrecord(str(dest / on_disk[0]))
    assert record.fs == 128 and record.sig_name == ["ECG1", "ECG2"]
    assert record.p_signal.shape == (230_400, 2)
    assert len(wfdb.rdann(str(dest / on_disk[0]), "atr").sample) > 1000
    assert (dest / "ANNOTATORS").read_bytes() == (source / "ANNOTATORS").read_bytes()


def test_nstdb_fetches_the_noise_recordings(physionet_mirror: str, tmp_path: Path) -> None:
    """nstdb's RECORDS lists 118e*/119e* too; the mirror has only bw, em and ma (and nstdb.txt)."""
    report = download_database("nstdb", dest_root=tmp_path, base_url=physionet_mirror, **FAST)
    assert report.n_records == 3 and report.not_on_mirror == 12
    dest = tmp_path / "nstdb" / "1.0.0"
    assert {"nstdb.txt", "ANNOTATORS", "bw.dat", "bw.hea", "em.dat", "ma.dat"} <= set(
        report.downloaded
    )
    for name in ("bw", "em", "ma"):
        record = wfdb.rdrecord(str(dest / name))
        assert record.fs == 360 and record.p_signal.shape == (650_000, 2), name
    # the re-run verifies and sends only the requests it must (checksum list + absent records)
    again = download_database("nstdb", dest_root=tmp_path, base_url=physionet_mirror, **FAST)
    assert again.downloaded == () and again.n_records == 3


def test_cli_download_nstdb(physionet_mirror: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["download", "nstdb", "--base-url", physionet_mirror, "--dest", str(tmp_path),
         "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("nstdb 1.0.0: 3 records")
    assert "12 records listed in RECORDS are not on the mirror" in result.stdout
