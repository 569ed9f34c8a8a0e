"""Where downloaded bytes come from: HTTP(S) with retries and ``Range`` resumes, or ``file://``.

Both transports open a file of a database version at a byte offset and yield its chunks, telling
whether they continue from that offset (a resumed transfer) or start the file over. Used by
:mod:`pipeline.download`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit
from urllib.request import url2pathname

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.util.retry import Retry

from pipeline.errors import UserError

__all__ = ["CHUNK", "FetchError", "FileTransport", "HttpTransport", "Transport", "make_transport"]

#: Bytes per read and write.
CHUNK = 1 << 20


class FetchError(Exception):
    """A transfer failed. ``retryable``: worth another attempt (a dropped connection);
    ``fatal``: the host is unreachable, so every other transfer will fail too."""

    def __init__(
        self,
        message: str,
        *,
        not_found: bool = False,
        retryable: bool = False,
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.not_found = not_found
        self.retryable = retryable
        self.fatal = fatal


Body = tuple[Iterator[bytes], bool]  # chunks, and whether they continue from the offset asked


class HttpTransport:
    """GET over HTTP(S) with one ``requests.Session`` per thread (sessions are not thread-safe)."""

    def __init__(self, base: str, *, retries: int, backoff: float, timeout: float) -> None:
        self.base = base
        self.host = urlsplit(base).netloc
        # connect=0: a refused connection or an unknown host fails at once with one clear line;
        # dropped reads and 429/5xx answers are retried with backoff
        self._retry = Retry(
            total=retries,
            connect=0,
            backoff_factor=backoff,
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=frozenset({"GET"}),
            raise_on_status=False,
            respect_retry_after_header=True,
        )
        self._timeout = timeout
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def url(self, rel: str) -> str:
        return self.base + quote(rel)

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(max_retries=self._retry)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            # identity: bytes as stored, so hashes and Range offsets refer to the same bytes
            session.headers.update(
                {"User-Agent": "ecg-service-downloader", "Accept-Encoding": "identity"}
            )
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    @contextmanager
    def open(self, rel: str, offset: int) -> Iterator[Body]:
        url = self.url(rel)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = self._session().get(url, headers=headers, stream=True, timeout=self._timeout)
        except requests.ConnectionError as err:
            reason = getattr(err.args[0], "reason", None) if err.args else None
            if isinstance(reason, NewConnectionError) or isinstance(err, requests.ConnectTimeout):
                raise FetchError(
                    f"cannot reach {self.host} ({short_reason(err)}); check the base URL "
                    "(--base-url / ECG_PHYSIONET_URL) and the network",
                    fatal=True,
                ) from None
            raise FetchError(f"{url}: {short_reason(err)}", retryable=True) from None
        except requests.RequestException as err:
            raise FetchError(f"{url}: {short_reason(err)}", retryable=True) from None
        with response:
            status = response.status_code
            if status in (404, 410):
                raise FetchError(f"{url}: HTTP {status} {response.reason}", not_found=True)
            if status == 416 and offset:  # the .part already holds the whole file (or more)
                yield iter(()), True
                return
            if status not in (200, 206):
                raise FetchError(f"{url}: HTTP {status} {response.reason}")
            resumed = (
                status == 206
                and bool(offset)
                and response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
            )
            if status == 206 and not resumed:
                raise FetchError(f"{url}: unexpected partial answer", retryable=True)
            yield self._chunks(response, url), resumed

    @staticmethod
    def _chunks(response: requests.Response, url: str) -> Iterator[bytes]:
        # read1 hands over whatever has arrived, so a dropped connection loses no received
        # bytes (iter_content would discard its partly filled buffer); urllib3 < 2 lacks it
        read1 = getattr(response.raw, "read1", None)
        received = 0
        try:
            if read1 is None:
                chunks: Iterator[bytes] = response.iter_content(CHUNK)
            else:
                chunks = iter(lambda: read1(CHUNK, decode_content=True), b"")
            for chunk in chunks:
                received += len(chunk)
                yield chunk
        except (requests.RequestException, HTTPError, OSError) as err:
            expected = response.headers.get("Content-Length")
            of = f" of {expected}" if expected else ""
            raise FetchError(
                f"{url}: connection lost after {received}{of} bytes ({short_reason(err)})",
                retryable=True,
            ) from None


class FileTransport:
    """Reads a local copy laid out like PhysioNet (``file://`` base URLs)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.root = Path(url2pathname(urlsplit(base).path))

    def url(self, rel: str) -> str:
        return self.base + quote(rel)

    def close(self) -> None:
        pass

    @contextmanager
    def open(self, rel: str, offset: int) -> Iterator[Body]:
        path = self.root / rel
        try:
            f = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise FetchError(f"{path}: no such file", not_found=True) from None
        except OSError as err:
            raise FetchError(f"{path}: {err.strerror or err}") from None
        with f:
            f.seek(offset)
            yield iter(lambda: f.read(CHUNK), b""), bool(offset)


Transport = HttpTransport | FileTransport


def short_reason(err: BaseException) -> str:
    text = str(err)
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if match:
        return match.group(1).strip()
    if "Read timed out" in text or "timed out" in text:
        return "timed out"
    return type(err).__name__ if len(text) > 200 else text


def make_transport(base_url: str, *, retries: int, backoff: float, timeout: float) -> Transport:
    """The transport for ``base_url`` (HTTP(S) or ``file://``); the base gets a final ``/``."""
    base = base_url.strip()
    if not base.endswith("/"):
        base += "/"
    scheme = urlsplit(base).scheme.lower()
    if scheme in ("http", "https"):
        return HttpTransport(base, retries=retries, backoff=backoff, timeout=timeout)
    if scheme == "file":
        return FileTransport(base)
    hint = f" (for a local copy use file://{Path(base).resolve()}/)" if not scheme else ""
    raise UserError(
        f"unsupported base URL {base_url!r}: expected http://, https:// or file://{hint}"
    )
