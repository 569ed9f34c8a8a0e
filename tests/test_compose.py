"""docker-compose.yml, Dockerfile, .dockerignore and .env.example: parsed, validated, exercised.

There is no Docker engine here. ``docker compose config`` (or the standalone ``docker-compose``
binary that the dev extra installs) parses, validates and interpolates the file without one; the
structure is checked on the raw YAML too, and the pieces that run outside containers (the
trainer's shell script, MLflow's Host-header setting) are run for real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
SERVICES = {"postgres", "mlflow", "trainer", "api"}
NAMED_VOLUMES = {"pgdata", "mlartifacts", "ecg-data"}
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as PyYAML reads it (merge keys resolved, no interpolation)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _compose_cli() -> list[str] | None:
    """``docker compose`` (v2 plugin) when it works, else a standalone ``docker-compose``."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    for candidate in (
        Path(sys.executable).parent / "docker-compose",
        shutil.which("docker-compose"),
    ):
        if candidate and Path(candidate).is_file():
            probe = subprocess.run(
                [str(candidate), "version"], capture_output=True, text=True, check=False
            )
            # Compose v1 (Python) lacks `config --format json`; accept v2 and later only.
            if probe.returncode == 0 and not re.search(r"version 1\.", probe.stdout):
                return [str(candidate)]
    return None


def _clean_env() -> dict[str, str]:
    """The environment minus the variables the compose file reads (they come from --env-file)."""
    names = set(_INTERPOLATION.findall(COMPOSE_FILE.read_text()))
    return {k: v for k, v in os.environ.items() if k not in names}


def _run_config(env_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor a v2 `docker-compose` binary is installed")
    return subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config", *extra],
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd=REPO,
        timeout=60,
        check=False,
    )


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


# --------------------------------------------------------------------------- compose CLI
def test_compose_config_accepts_the_file_and_interpolates_env(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text(
        "POSTGRES_PASSWORD=pw-from-env-file\nECG_PHYSIONET_URL=http://mirror.invalid/files/\n"
    )
    result = _run_config(env_file, "--format", "json")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)

    assert set(config["services"]) == SERVICES
    assert set(config["volumes"]) >= NAMED_VOLUMES
    services = config["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pw-from-env-file"
    assert services["mlflow"]["environment"]["PGPASSWORD"] == "pw-from-env-file"
    assert services["trainer"]["environment"]["ECG_PHYSIONET_URL"] == "http://mirror.invalid/files/"
    assert services["trainer"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert services["api"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # The password reaches no command line.
    for name, service in services.items():
        assert "pw-from-env-file" not in json.dumps(service.get("command")), name
    assert services["api"]["depends_on"]["trainer"]["condition"] == (
        "service_completed_successfully"
    )
    # Ports are published on loopback only by default.
    for name in ("mlflow", "api"):
        assert {p["host_ip"] for p in services[name]["ports"]} == {"127.0.0.1"}, name


def test_compose_config_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    # .env.example as shipped: POSTGRES_PASSWORD is empty.
    env_file = tmp_path / "env"
    shutil.copy(REPO / ".env.example", env_file)
    result = _run_config(env_file, "--quiet")
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr
    assert "set POSTGRES_PASSWORD in .env" in result.stderr


# --------------------------------------------------------------------------- YAML structure
def test_the_four_services_and_their_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    for name in ("postgres", "mlflow", "api"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in {"CMD", "CMD-SHELL"}, name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "5000/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    assert "8000/health" in " ".join(services["api"]["healthcheck"]["test"])
    # The trainer is one-shot.
    assert services["trainer"]["restart"] == "no"
    assert "healthcheck" not in services["trainer"]


def test_startup_order_is_enforced_by_conditions(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "depends_on" not in services["postgres"]
    assert services["mlflow"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["trainer"]["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    assert services["api"]["depends_on"] == {
        "mlflow": {"condition": "service_healthy"},
        "trainer": {"condition": "service_completed_successfully"},
    }


def test_mlflow_server_runs_on_postgres_with_proxied_artifacts(compose: dict[str, Any]) -> None:
    command = compose["services"]["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"]
    backend = command[command.index("--backend-store-uri") + 1]
    # psycopg2 explicitly: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, not installed.
    assert backend.startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in backend
    assert command[command.index("--artifacts-destination") + 1] == "/mlartifacts"
    assert "--serve-artifacts" in command
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "5000"
    api = compose["services"]["api"]["command"]
    assert api[:2] == ["ecg", "serve"] and "0.0.0.0" in api and "8000" in api


def test_every_service_runs_as_a_non_root_user(compose: dict[str, Any]) -> None:
    dockerfile_users = re.findall(r"^USER\s+(\S+)", (REPO / "Dockerfile").read_text(), re.M)
    assert dockerfile_users, "the Dockerfile sets no USER"
    for name, service in compose["services"].items():
        user = str(service.get("user", ""))
        assert user, f"{name} has no user"
        assert user.split(":")[0] not in {"root", "0"}, name
        if service.get("image", "").startswith("${ECG_IMAGE"):
            # The project's image: the same unprivileged user as the Dockerfile's last USER.
            assert user == dockerfile_users[-1], name


def test_no_literal_secrets(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (name, key, value)
    for text in _strings(compose):
        # user:password@host in a URI, once ${...} interpolations are set aside
        assert not re.search(r"://[^/\s@:]+:[^/\s@]+@", _INTERPOLATION.sub("X", text)), text


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    assert set(compose["volumes"]) == NAMED_VOLUMES
    mounts = {
        name: [v.split(":") for v in service.get("volumes", [])]
        for name, service in compose["services"].items()
    }
    for name, service_mounts in mounts.items():
        for source, *_ in service_mounts:
            assert source in NAMED_VOLUMES, f"{name} mounts {source}, not a named volume"
    assert ["pgdata", "/var/lib/postgresql/data"] in mounts["postgres"]
    assert ["mlartifacts", "/mlartifacts"] in mounts["mlflow"]
    assert ["ecg-data", "/data"] in mounts["trainer"]
    assert compose["services"]["trainer"]["environment"]["ECG_DATA_DIR"] == "/data"


def test_env_example_documents_every_variable(compose: dict[str, Any]) -> None:
    used = set(_INTERPOLATION.findall(COMPOSE_FILE.read_text()))
    documented = set(
        re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (REPO / ".env.example").read_text(), re.M)
    )
    assert used - documented == set()
    assert "ECG_PHYSIONET_URL" in used


# --------------------------------------------------------------------------- Dockerfile
def test_dockerfile_is_multi_stage_cpu_torch_and_unprivileged() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    assert [alias for _, alias in stages] == ["builder", "runtime"]
    assert all("-slim" in image for image, _ in stages)
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text
    runtime = text.split(" AS runtime", 1)[1]
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    assert re.search(r"^USER\s+10001", runtime, re.M)
    assert "useradd" in runtime


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Allow-list: ignore everything, then re-include only what the image builds from.
    assert lines[0] == "*"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert included == {"pyproject.toml", "README.md", "models", "pipeline", "service"}
    copied = re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", (REPO / "Dockerfile").read_text(), re.M)
    sources = {src.rstrip("/") for line in copied for src in line.split()}
    assert sources <= included, sources - included


# --------------------------------------------------------------------------- run the pieces
def _trainer_script(compose: dict[str, Any]) -> str:
    command = compose["services"]["trainer"]["command"]
    assert command[:2] == ["sh", "-ec"]
    # Compose turns $$ into a literal $ before the shell sees it.
    return command[2].replace("$$", "$")


def _run_trainer(script: str, tmp_path: Path, tracking_uri: str, **env: str) -> tuple[str, list]:
    """Run the trainer's script with ``ecg`` replaced by a recorder; return (stdout, calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls.jsonl"
    calls.unlink(missing_ok=True)
    recorder = bin_dir / "ecg"
    recorder.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    recorder.chmod(0o755)
    full_env = {
        **os.environ,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTRY_URI": tracking_uri,
        "ECG_EPOCHS": "3",
        **env,
    }
    result = subprocess.run(
        ["sh", "-ec", script], capture_output=True, text=True, env=full_env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    recorded = (
        [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    )
    return result.stdout, recorded


def test_trainer_script_trains_everything_once_then_keeps_the_champions(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    script = _trainer_script(compose)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    _, calls = _run_trainer(script, tmp_path, tracking_uri)
    options = ["--epochs", "3", "--register", "--no-progress"]
    assert calls == [
        ["download", "mitdb"],
        ["download", "svdb"],
        ["download", "ptb-xl"],
        ["prepare", "mitdb"],
        ["prepare", "ptb-xl"],
        *(["train", "--dataset", "mitdb", "--cell", m, *options] for m in ("gru", "lstm")),
        ["train-beats", "--epochs", "3", "--register"],
        ["train-record", "--epochs", "3", "--register"],
    ]

    # Both champions registered (in a real MLflow store): the next `compose up` trains nothing.
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    for name in ("ecg-arrhythmia", "ecg-heart-disease"):
        client.create_registered_model(name)
        version = client.create_model_version(name, source=str(tmp_path / "model"))
        client.set_registered_model_alias(name, "champion", version.version)
    out, calls = _run_trainer(script, tmp_path, tracking_uri)
    assert calls == []
    assert "nothing to do" in out

    _, calls = _run_trainer(script, tmp_path, tracking_uri, ECG_RETRAIN="1")
    assert len(calls) == 9


def test_mlflow_host_allow_list_matches_the_local_stack(compose: dict[str, Any]) -> None:
    """MLflow's DNS-rebinding guard rejects ``Host: mlflow:5000`` unless allowed; the compose
    default is the value ``pipeline.stack.local`` runs with, whose effect tests/test_stack.py checks
    on a real server."""
    from pipeline.stack.local import MLFLOW_ALLOWED_HOSTS

    allowed = compose["services"]["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]
    assert allowed == f"${{MLFLOW_ALLOWED_HOSTS:-{MLFLOW_ALLOWED_HOSTS}}}"
