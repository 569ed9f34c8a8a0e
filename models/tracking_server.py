"""Fail fast, with one clear line, when an MLflow tracking server does not answer.

Shared by whoever talks to a registry: the service before it resolves an alias, the pipeline
before it logs. MLflow's own client retries a refused connection with back-off for minutes.
"""

from __future__ import annotations

__all__ = ["TrackingServerUnreachableError", "check_reachable"]


class TrackingServerUnreachableError(ConnectionError):
    """The tracking server at an ``http(s)://`` URI did not answer; the message says what to do."""


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Probe ``<uri>/health`` of an HTTP tracking server; return when anything answers.

    Any HTTP answer counts as reachable (so does a TLS error: it answered); non-HTTP URIs (sqlite,
    file, databricks) are not probed.

    Raises
    ------
    TrackingServerUnreachableError
        When the connection fails or times out.
    """
    import ssl
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass  # it answered
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, ssl.SSLError):
            return  # it answered; TLS is MLflow's business (e.g. MLFLOW_TRACKING_INSECURE_TLS)
        raise TrackingServerUnreachableError(
            f"cannot reach the MLflow tracking server at {uri} ({reason}); start it "
            "(e.g. `make stack` or `mlflow server`) or point MLFLOW_TRACKING_URI elsewhere"
        ) from err
