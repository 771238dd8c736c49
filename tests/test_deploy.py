"""Shipping: the Dockerfile, the compose file and the Kubernetes manifests hold together."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import SETTINGS, Settings
from workers.runner import SHUTDOWN_GRACE

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.30.0"  # the oldest version we support; schemas ship in the wheel
# Variables of images we run that are not ours (the postgres image's own).
STANDARD_VARIABLES = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}
# The passwords deploy/postgres-roles.sh gives auditq's three roles (compose only).
ROLE_PASSWORDS = {"AUDITQ_OWNER_PASSWORD", "AUDITQ_WORKER_PASSWORD", "AUDITQ_API_PASSWORD"}
IMAGE_UID = 10001  # the Dockerfile's USER


def settings_variables() -> frozenset[str]:
    """Every AUDITQ_* variable service/settings.py declares."""
    return frozenset(s.name for s in SETTINGS)


def test_settings_variables_are_found() -> None:
    assert {"AUDITQ_REDIS_URL", "AUDITQ_DATABASE_URL", "AUDITQ_LOG_FORMAT"} <= settings_variables()
    assert len(settings_variables()) >= 20


# --- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


@cache
def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions split by stage (each list starts with its FROM)."""
    result: list[list[tuple[str, str]]] = []
    for keyword, args in dockerfile_instructions((ROOT / "Dockerfile").read_text()):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "hadolint"), "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_hadolint_passes() -> None:
    result = hadolint(ROOT / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout


def test_hadolint_ignores_each_have_a_reason() -> None:
    config = yaml.safe_load((ROOT / ".hadolint.yaml").read_text())
    lines = (ROOT / ".hadolint.yaml").read_text().splitlines()
    for rule in config.get("ignored") or []:
        index = next(i for i, line in enumerate(lines) if line.strip() == f"- {rule}")
        assert lines[index - 1].strip().startswith("#"), f"{rule} is ignored without a reason"


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last match wins)."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex = (
            re.escape(pattern)
            .replace(r"\*\*/", "(.*/)?")
            .replace(r"\*\*", ".*")
            .replace(r"\*", "[^/]*")
            .replace(r"\?", "[^/]")
            .replace(r"\[", "[")
            .replace(r"\]", "]")
        )
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_matcher() -> None:
    assert dockerignore_excludes(".venv/bin/python")
    assert dockerignore_excludes("tests/test_deploy.py")
    assert dockerignore_excludes("service/__pycache__/cli.cpython-312.pyc")
    assert dockerignore_excludes("service/cli.pyc")
    assert not dockerignore_excludes("service/cli.py")


def copy_sources() -> list[tuple[str, str]]:
    """(source, destination) of every COPY from the build context."""
    pairs = []
    for stage in stages():
        for keyword, args in stage:
            if keyword in ("COPY", "ADD"):
                words = [w for w in args.split() if not w.startswith("--")]
                if "--from=" in args:
                    continue
                *sources, dest = words
                pairs.extend((source, dest) for source in sources)
    return pairs


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    sources = copy_sources()
    assert sources
    for source, _ in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if p.is_file()]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            assert not dockerignore_excludes(relative), f"{relative} is excluded by .dockerignore"


def test_schema_sql_lands_beside_the_service_package() -> None:
    # service/db.py reads schema.sql from the parent directory of the `service` package.
    workdir = Path("/")
    destinations: dict[str, Path] = {}
    for keyword, args in stages()[0]:
        if keyword == "WORKDIR":
            workdir = workdir / args
        elif keyword == "COPY" and "--from=" not in args:
            *sources, dest = args.split()
            for source in sources:
                target = workdir / dest
                destinations[source] = target / source if dest.endswith(("/", ".")) else target
    assert "schema.sql" in destinations and "service" in destinations
    assert destinations["schema.sql"].resolve() == destinations["service"].parent / "schema.sql"


def test_image_shape() -> None:
    builder, final = stages()[0], stages()[-1]
    assert len(stages()) >= 2, "multi-stage build"
    for stage in (builder, final):
        assert re.fullmatch(r"\$\{PYTHON_IMAGE\}( AS \w+)?", stage[0][1])
    keyword, arg = dockerfile_instructions((ROOT / "Dockerfile").read_text())[0]
    assert keyword == "ARG"
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.12-slim(-\w+)?", arg)
    final_text = "\n".join(args for _, args in final)
    assert not re.search(r"\b(gcc|build-essential|apt-get install)\b", final_text)
    user = [args for keyword, args in final if keyword == "USER"]
    assert user and user[-1].split(":")[0] == str(IMAGE_UID)
    env = " ".join(args for keyword, args in final if keyword == "ENV")
    assert "AUDITQ_HTTP_HOST=0.0.0.0" in env
    for name in re.findall(r"\b(AUDITQ_[A-Z0-9_]+)=", env):
        assert name in settings_variables(), f"the image sets unknown variable {name}"
    healthcheck = next(args for keyword, args in final if keyword == "HEALTHCHECK")
    assert "/healthz" in healthcheck and "urllib" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck


def test_entrypoint_and_default_command_resolve() -> None:
    final = stages()[-1]
    entrypoint = exec_form(next(args for keyword, args in final if keyword == "ENTRYPOINT"))
    cmd = exec_form(next(args for keyword, args in final if keyword == "CMD"))
    assert entrypoint == ["auditq"]
    assert cmd == ["api"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts[entrypoint[0]].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


@pytest.mark.parametrize("command", ["api", "worker", "migrate"])
def test_the_image_commands_are_real_subcommands(command: str) -> None:
    result = subprocess.run(
        [str(BIN / "auditq"), command, "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert f"auditq {command}" in result.stdout


def test_a_made_up_subcommand_fails() -> None:
    result = subprocess.run(
        [str(BIN / "auditq"), "no-such-command", "--help"], capture_output=True, timeout=30
    )
    assert result.returncode != 0


# --- deploy/env.example ---------------------------------------------------------------------------


def env_example() -> dict[str, str]:
    text = (DEPLOY / "env.example").read_text()
    return dict(re.findall(r"^#? ?(AUDITQ_[A-Z0-9_]+)=(.*)$", text, flags=re.MULTILINE))


def test_env_example_lists_every_setting() -> None:
    assert set(env_example()) == settings_variables()


@pytest.mark.parametrize("name", sorted(settings_variables()))
def test_env_example_shows_the_default(name: str) -> None:
    value = env_example()[name]
    default = Settings.from_env({}, published=False)
    assert Settings.from_env({name: value}, published=False) == default, f"{name}={value}"


def test_env_example_shows_the_declared_defaults() -> None:
    """Each line of deploy/env.example shows the default service/settings.py declares."""
    shown = env_example()
    wrong = [
        f"{s.name}={shown[s.name]} (declared: {s.default!r})"
        for s in SETTINGS
        if shown[s.name] != s.default
    ]
    assert not wrong, "; ".join(wrong)


# --- deploy/compose.yaml ----------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def test_compose_services() -> None:
    services = compose()["services"]
    assert {"redis", "postgres", "migrate", "api", "worker"} <= set(services)

    redis = services["redis"]
    assert re.fullmatch(r"redis:7(\.\d+)*(-\w+)?", redis["image"])
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "healthcheck" in redis

    postgres = services["postgres"]
    assert re.fullmatch(r"postgres:16(\.\d+)*(-\w+)?", postgres["image"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert set(compose()["volumes"]) >= {v.split(":")[0] for v in redis["volumes"]}

    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"

    api = services["api"]
    assert api["command"] == ["api"]
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert any(str(p).endswith(":8080") for p in api["ports"])
    assert api["environment"]["AUDITQ_HTTP_HOST"] == "0.0.0.0"

    worker = services["worker"]
    assert worker["command"] == ["worker"]
    assert worker["deploy"]["replicas"] >= 2
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace and int(grace[1]) > SHUTDOWN_GRACE
    assert worker["healthcheck"] == {"disable": True}, "the image's check is the API's"

    for name in ("migrate", "api", "worker"):
        env = services[name]["environment"]
        assert env["AUDITQ_REDIS_URL"].startswith("redis://redis:")
        assert "@postgres:5432/" in env["AUDITQ_DATABASE_URL"]
    assert (DEPLOY / "postgres-roles.sh").stat().st_mode & 0o111, "an executable init script"


def test_compose_uses_only_known_variables() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    interpolated = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    keys = {
        key
        for service in compose()["services"].values()
        for key in (service.get("environment") or {})
    }
    assert interpolated and keys
    for name in interpolated | keys:
        known = settings_variables() | STANDARD_VARIABLES | ROLE_PASSWORDS
        assert name in known, f"unknown {name}"
    for name in interpolated:
        assert name in comments, f"${{{name}}} is not documented in a comment"


def docker_compose_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def test_docker_compose_config_accepts_the_file() -> None:
    if not docker_compose_works():
        pytest.skip("`docker compose` is not available here")
    result = subprocess.run(
        ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- deploy/kubernetes ----------------------------------------------------------------------------


@cache
def manifests() -> dict[str, list[dict[str, Any]]]:
    """Every YAML document under deploy/kubernetes, by file name."""
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(KUBE.glob("*.yaml"))
    }


def resources(kind: str) -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["name"]: doc
        for docs in manifests().values()
        for doc in docs
        if doc["kind"] == kind
    }


STRUCTURAL_KINDS = {
    # CRDs whose schemas kubernetes-validate does not ship: checked by the tests below.
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
}


def test_manifests_validate_against_kubernetes() -> None:
    validated = set()
    for name, docs in manifests().items():
        for doc in docs:
            if (doc["apiVersion"], doc["kind"]) in STRUCTURAL_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {exc.message}")
            validated.add(doc["kind"])
    expected = {"Deployment", "Job", "Service", "PodDisruptionBudget", "Secret", "ConfigMap"}
    assert expected <= validated


def test_validation_catches_a_typo() -> None:
    doc = json.loads(json.dumps(resources("Deployment")["auditq-api"]))
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_hpa_alternative() -> None:
    kustomization = manifests()["kustomization.yaml"][0]
    listed = set(kustomization["resources"])
    assert all((KUBE / name).is_file() for name in listed)
    assert listed == set(manifests()) - {"kustomization.yaml", "worker-hpa.yaml"}
    assert [image["name"] for image in kustomization["images"]] == ["auditq"]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def workloads() -> list[dict[str, Any]]:
    return [*resources("Deployment").values(), *resources("Job").values()]


def test_workloads_run_the_image_with_config_and_secret_and_limits() -> None:
    for doc in workloads():
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == IMAGE_UID
        for container in spec["containers"]:
            where = f"{doc['metadata']['name']}/{container['name']}"
            assert container["image"] == "auditq", where
            assert container["args"][0] in {"api", "worker", "migrate"}, where
            refs = {next(iter(source.values()))["name"] for source in container.get("envFrom", [])}
            assert {"auditq-config", "auditq-redis"} < refs, where
            resources_ = container["resources"]
            assert {"cpu", "memory"} <= set(resources_["requests"]), where
            assert "memory" in resources_["limits"], where
    commands = {pod_spec(doc)["containers"][0]["args"][0] for doc in workloads()}
    assert commands == {"api", "worker", "migrate"}
    assert resources("Job")["auditq-migrate"]["spec"]["template"]["spec"]["containers"][0][
        "args"
    ] == ["migrate"]


def test_config_and_secret_cover_every_setting_and_parse() -> None:
    config = resources("ConfigMap")["auditq-config"]["data"]
    secrets = resources("Secret")
    secret = {
        **secrets["auditq-redis"]["stringData"],
        **secrets["auditq-worker"]["stringData"],
    }
    assert set(secret) == {"AUDITQ_REDIS_URL", "AUDITQ_DATABASE_URL", "AUDITQ_WORKER_DATABASE_URL"}
    for doc in secrets.values():
        values = doc["stringData"].values()
        assert all("CHANGE-ME" in value for value in values), "placeholders, marked"
    assert "PLACEHOLDER" in (KUBE / "secret.yaml").read_text()
    assert set(config) | set(secret) == settings_variables()
    assert all(isinstance(value, str) for value in config.values())
    settings = Settings.from_env({**config, **secret}, published=False)
    assert settings.http_host == "0.0.0.0"
    assert settings.log_format == "json"


# The ConfigMap's values that are not the declared defaults, each for a reason its comment says.
CONFIGMAP_CHOICES = {
    "AUDITQ_HTTP_HOST",
    "AUDITQ_LOG_FORMAT",
    "AUDITQ_DATA_DIR",
    "AUDITQ_SEAL_KEY_FILE",
    "AUDITQ_SUBJECT_KEY_FILE",
    "AUDITQ_SEAL_STATE_FILE",
}


def test_config_shows_the_declared_defaults_but_where_it_chooses() -> None:
    config = resources("ConfigMap")["auditq-config"]["data"]
    wrong = [
        f"{s.name}={config[s.name]!r} (declared: {s.default!r})"
        for s in SETTINGS
        if s.name in config and s.name not in CONFIGMAP_CHOICES and config[s.name] != s.default
    ]
    assert not wrong, "; ".join(wrong)
    assert all(config[name] != _default(name) for name in CONFIGMAP_CHOICES)


def _default(name: str) -> str:
    return next(s.default for s in SETTINGS if s.name == name)


def container_of(deployment: str) -> dict[str, Any]:
    container: dict[str, Any] = pod_spec(resources("Deployment")[deployment])["containers"][0]
    return container


def test_api_probes_and_service() -> None:
    container = container_of("auditq-api")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = resources("ConfigMap")["auditq-config"]["data"]
    assert ports["http"] == int(config["AUDITQ_HTTP_PORT"])
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert liveness["httpGet"]["path"] == "/healthz"
    assert readiness["httpGet"]["path"] == "/readyz"
    assert liveness["httpGet"]["port"] in ("http", ports["http"])
    assert readiness["httpGet"]["port"] in ("http", ports["http"])
    # The probed paths are real routes of the app.
    from service.api.app import ROUTES

    paths = {route.path for route in ROUTES}
    assert {"/healthz", "/readyz"} <= paths

    service = resources("Service")["auditq-api"]
    labels = resources("Deployment")["auditq-api"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in ("http", ports["http"])


def test_selectors_match_their_pods() -> None:
    for name, deployment in resources("Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    budgets = resources("PodDisruptionBudget")
    assert set(budgets) == {"auditq-api", "auditq-worker"}
    for name, budget in budgets.items():
        labels = resources("Deployment")[name]["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items(), name


def test_worker_gets_time_to_finish_its_jobs() -> None:
    worker = pod_spec(resources("Deployment")["auditq-worker"])
    assert worker["terminationGracePeriodSeconds"] >= max(30, SHUTDOWN_GRACE + 10)


def test_scaled_object_scales_the_worker_on_queue_depth() -> None:
    (scaled,) = resources("ScaledObject").values()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == "auditq-worker"
    assert target.get("kind", "Deployment") == "Deployment"
    assert target["name"] in resources("Deployment")
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    # arq's queue is a sorted set: KEDA's redis list trigger (LLEN) cannot read it.
    assert [t["type"] for t in spec["triggers"]] == ["prometheus"]
    metadata = spec["triggers"][0]["metadata"]
    query = re.search(r"(auditq_\w+)\{([^}]*)\}", metadata["query"])
    assert query, metadata["query"]
    # The metric is one that /metrics really exports, with the labels the query selects.
    metrics_source = (ROOT / "service" / "api" / "metrics.py").read_text()
    family = re.search(
        rf'MetricFamily\(\s*"{query[1]}",[^)]*labels=\[([^\]]*)\]', metrics_source, re.DOTALL
    )
    assert family, f"{query[1]} is not exported by service/api/metrics.py"
    selected = dict(re.findall(r'(\w+)="([^"]*)"', query[2]))
    assert selected.get("status") == "queued"
    assert set(selected) <= set(re.findall(r'"(\w+)"', family[1]))
    config = resources("ConfigMap")["auditq-config"]["data"]
    assert selected.get("queue", config["AUDITQ_QUEUE"]) == config["AUDITQ_QUEUE"]
    assert int(metadata["threshold"]) > 0
    assert metadata["serverAddress"].startswith("http")
    assert "LLEN" in (KUBE / "worker-scaledobject.yaml").read_text(), "the why is written down"


def test_hpa_alternative_targets_the_worker() -> None:
    (hpa,) = resources("HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "auditq-worker"


# --- Least privilege: every manifest keeps owner, worker and API apart, with one key ----------


def _db_user(url: str) -> str:
    user = re.match(r"postgresql://([^:@/]+)[:@]", url)
    assert user, url
    return user[1]


def _compose_mounts(service: dict[str, Any]) -> set[str]:
    """Paths of the read-only secrets Compose mounts into `service`."""
    return {f"/run/secrets/{name}" for name in service.get("secrets", [])}


# The model of docs/integrity.md in the shipped deployments: owner, worker and API each with
# their own database role (never the superuser); one seal key (and the subject key) mounted
# read-only into every worker and API; the sealer's state on a volume that outlives workers.
RUNTIME_USERS = {"migrate": "auditq_owner", "api": "auditq_api", "worker": "auditq_worker"}


def compose_model_problems(data: dict[str, Any]) -> list[str]:
    """What in a compose file breaks the model (empty: nothing)."""
    services = data["services"]
    problems = []
    superuser = services["postgres"]["environment"]["POSTGRES_USER"]
    for name, user in RUNTIME_USERS.items():
        env = services[name]["environment"]
        for variable in ("AUDITQ_DATABASE_URL", "AUDITQ_WORKER_DATABASE_URL"):
            if variable in env and _db_user(env[variable]) != user:
                problems.append(f"{name}: {variable} is {_db_user(env[variable])}, not {user}")
        if _db_user(env["AUDITQ_DATABASE_URL"]) == superuser:
            problems.append(f"{name}: connects as the superuser")
    if "AUDITQ_WORKER_DATABASE_URL" not in services["worker"]["environment"]:
        problems.append("worker: no AUDITQ_WORKER_DATABASE_URL")
    for name in ("worker", "api"):
        env = services[name]["environment"]
        for variable in ("AUDITQ_SEAL_KEY_FILE", "AUDITQ_SUBJECT_KEY_FILE"):
            if env.get(variable) not in _compose_mounts(services[name]):
                problems.append(f"{name}: {variable} is not a mounted secret")
    if data["secrets"]["seal-key"].get("file") != "./keys/seal-key":
        problems.append("the seal key is not the one file ./keys/seal-key")
    state = services["worker"]["environment"].get("AUDITQ_SEAL_STATE_FILE", "")
    named = {v.split(":")[1]: v.split(":")[0] for v in services["worker"].get("volumes", [])}
    if named.get(str(Path(state).parent)) not in data.get("volumes", {}):
        problems.append("worker: AUDITQ_SEAL_STATE_FILE is not on a named volume")
    return problems


def test_compose_keeps_the_roles_apart_and_mounts_one_key() -> None:
    assert compose_model_problems(compose()) == []
    roles = (DEPLOY / "postgres-roles.sh").read_text()
    for role in ("auditq_owner", "auditq_worker", "auditq_api"):
        assert f"CREATE ROLE {role} LOGIN" in roles
    assert "OWNER TO auditq_owner" in roles and "REVOKE CREATE ON SCHEMA public" in roles


def _env_sources(container: dict[str, Any]) -> list[str]:
    return [next(iter(source.values()))["name"] for source in container.get("envFrom", [])]


def _volume_mounts(doc: dict[str, Any], container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Mount path -> (volume, readOnly) of `container`."""
    volumes = {v["name"]: v for v in pod_spec(doc).get("volumes", [])}
    return {
        m["mountPath"]: {**volumes[m["name"]], "readOnly": m.get("readOnly") is True}
        for m in container.get("volumeMounts", [])
    }


def kubernetes_model_problems(docs: list[dict[str, Any]]) -> list[str]:
    """What in a set of Kubernetes manifests breaks the model (empty: nothing)."""
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc.get("metadata", {}).get("name", "")] = doc
    secrets = {name: doc.get("stringData", {}) for name, doc in by_kind["Secret"].items()}
    config = by_kind["ConfigMap"]["auditq-config"]["data"]
    problems = []
    for doc in [*by_kind.get("Deployment", {}).values(), *by_kind.get("Job", {}).values()]:
        name = doc["metadata"]["name"]
        component = name.removeprefix("auditq-")
        container = pod_spec(doc)["containers"][0]
        database = [
            secrets[s] for s in _env_sources(container)
            if s in secrets and "AUDITQ_DATABASE_URL" in secrets[s]
        ]  # fmt: skip
        users = {
            _db_user(d[v])
            for d in database
            for v in ("AUDITQ_DATABASE_URL", "AUDITQ_WORKER_DATABASE_URL")
            if d.get(v)
        }
        if len(database) != 1 or users != {RUNTIME_USERS[component]}:
            problems.append(f"{name}: database roles {sorted(users)}, not its own")
        if component == "worker" and not any(d.get("AUDITQ_WORKER_DATABASE_URL") for d in database):
            problems.append(f"{name}: no AUDITQ_WORKER_DATABASE_URL")
        if component == "migrate":
            continue
        mounts = _volume_mounts(doc, container)
        for variable in ("AUDITQ_SEAL_KEY_FILE", "AUDITQ_SUBJECT_KEY_FILE"):
            mount = mounts.get(str(Path(config[variable]).parent), {})
            if mount.get("secret", {}).get("secretName") != "auditq-keys" or not mount["readOnly"]:
                problems.append(f"{name}: {variable} is not the auditq-keys Secret, read-only")
        if component == "worker":
            mount = mounts.get(str(Path(config["AUDITQ_SEAL_STATE_FILE"]).parent), {})
            claim = by_kind.get("PersistentVolumeClaim", {}).get(
                mount.get("persistentVolumeClaim", {}).get("claimName", "")
            )
            if claim is None or claim["spec"]["accessModes"] != ["ReadWriteMany"]:
                problems.append(f"{name}: AUDITQ_SEAL_STATE_FILE is not on a shared claim")
    if set(secrets.get("auditq-keys", {})) != {"seal-key", "subject-key"}:
        problems.append("auditq-keys: not the seal key and the subject key")
    if config.get("AUDITQ_ALLOW_PRIVILEGED_ROLE") != "":
        problems.append("AUDITQ_ALLOW_PRIVILEGED_ROLE is set")
    return problems


def test_kubernetes_keeps_the_roles_apart_and_mounts_one_key() -> None:
    assert kubernetes_model_problems([d for docs in manifests().values() for d in docs]) == []


def test_the_model_checks_fail_on_a_shared_credential_or_an_unmounted_key() -> None:
    """Not vacuous: the checks above catch the shapes the issue found."""

    def kubernetes(change: Any) -> list[str]:
        docs = json.loads(json.dumps([d for docs in manifests().values() for d in docs]))
        change({(d["kind"], d.get("metadata", {}).get("name")): d for d in docs})
        return kubernetes_model_problems(docs)

    def worker(docs: dict[tuple[str, str], Any]) -> dict[str, Any]:
        container: dict[str, Any] = pod_spec(docs["Deployment", "auditq-worker"])["containers"][0]
        return container

    def share_owner(docs: dict[tuple[str, str], Any]) -> None:  # the owner's credentials
        worker(docs)["envFrom"][-1]["secretRef"]["name"] = "auditq-owner"

    def unmount_keys(docs: dict[tuple[str, str], Any]) -> None:
        container = worker(docs)
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "keys"]

    def state_on_empty_dir(docs: dict[tuple[str, str], Any]) -> None:
        spec = pod_spec(docs["Deployment", "auditq-worker"])
        for volume in spec["volumes"]:
            if volume["name"] == "seal-state":
                del volume["persistentVolumeClaim"]
                volume["emptyDir"] = {}

    def no_worker_url(docs: dict[tuple[str, str], Any]) -> None:
        docs["Secret", "auditq-worker"]["stringData"]["AUDITQ_WORKER_DATABASE_URL"] = ""

    assert kubernetes(share_owner) == [
        "auditq-worker: database roles ['auditq_owner'], not its own",
        "auditq-worker: no AUDITQ_WORKER_DATABASE_URL",
    ]
    assert len(kubernetes(unmount_keys)) == 2  # the seal key and the subject key
    assert kubernetes(state_on_empty_dir) == [
        "auditq-worker: AUDITQ_SEAL_STATE_FILE is not on a shared claim"
    ]
    assert kubernetes(no_worker_url) == ["auditq-worker: no AUDITQ_WORKER_DATABASE_URL"]

    shared = json.loads(json.dumps(compose()))
    superuser_url = "postgresql://postgres:pw@postgres:5432/auditq"
    shared["services"]["api"]["environment"]["AUDITQ_DATABASE_URL"] = superuser_url
    del shared["services"]["worker"]["secrets"]
    shared["services"]["worker"]["volumes"] = []
    assert compose_model_problems(shared) == [
        "api: AUDITQ_DATABASE_URL is postgres, not auditq_api",
        "api: connects as the superuser",
        "worker: AUDITQ_SEAL_KEY_FILE is not a mounted secret",
        "worker: AUDITQ_SUBJECT_KEY_FILE is not a mounted secret",
        "worker: AUDITQ_SEAL_STATE_FILE is not on a named volume",
    ]
