"""The Docker deployment (Dockerfile, docker-compose.yml, docs/cluster.md), checked by reading.

No Docker here (no daemon, no registry): these tests check what can go wrong without building,
against the code itself: every ``KERNELMAP_*`` variable is a real setting, every ``kernelmap``
command line parses with the real CLI parser, the services wait for what they need, data lives
in named volumes, the worker reserves a GPU, and the images are pinned and run as non-root.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml

from services.cli.main import build_parser
from services.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
DOCS = (ROOT / "docs" / "cluster.md").read_text()
OUR_IMAGES = ("api", "worker")  # Dockerfile targets


def instructions(text: str) -> list[tuple[str, str]]:
    """A Dockerfile's instructions as (INSTRUCTION, arguments), continuations joined, comments
    and heredoc bodies left out."""
    out: list[tuple[str, str]] = []
    lines = iter(text.splitlines())
    for line in lines:
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        while s.endswith("\\"):
            nxt = next(lines).strip()
            if not nxt.startswith("#"):
                s = s[:-1].rstrip() + " " + nxt
        name, _, rest = s.partition(" ")
        heredoc = re.search(r"<<-?['\"]?(\w+)['\"]?", rest)
        if heredoc:
            for body in lines:
                if body.strip() == heredoc.group(1):
                    break
        out.append((name.upper(), rest.strip()))
    return out


INSTRUCTIONS = instructions(DOCKERFILE)


def global_args() -> dict[str, str]:
    """ARG defaults declared before the first FROM."""
    args: dict[str, str] = {}
    for name, rest in INSTRUCTIONS:
        if name == "FROM":
            break
        if name == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    return args


def stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's base image (ARGs substituted) and instructions, by stage name."""
    args = global_args()
    out: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for name, rest in INSTRUCTIONS:
        if name == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--")]
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: FROM {rest}"
            current = [("FROM", image)]
            out[words[2]] = current
        elif current is not None:
            current.append((name, rest))
    return out


STAGES = stages()


def command_lines() -> list[tuple[str, list[str]]]:
    """Every ``kernelmap`` command line of the deployment: (where, argv without 'kernelmap')."""
    found: list[tuple[str, list[str]]] = []
    for name, svc in SERVICES.items():
        if "command" in svc and _built_here(svc):
            argv = svc["command"]
            argv = shlex.split(argv) if isinstance(argv, str) else list(argv)
            if argv[:1] == ["kernelmap"]:  # the entry point takes either form
                argv = argv[1:]
            found.append((f"docker-compose.yml: {name}", argv))
    for stage in OUR_IMAGES:
        for name, rest in STAGES[stage]:
            if name == "CMD":
                found.append((f"Dockerfile: {stage} CMD", yaml.safe_load(rest)))
    for block in shell_blocks(DOCS):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0]
            m = re.search(r"(?:^|\s)kernelmap\s+([a-z].*)$", line)
            if m:
                found.append((f"docs/cluster.md: {line.strip()}", shlex.split(m.group(1))))
    return found


def shell_blocks(markdown: str) -> list[str]:
    """The text of each fenced ``sh``/``bash`` block (indented ones in lists too)."""
    blocks: list[str] = []
    current: list[str] | None = None
    lang = ""
    for line in markdown.splitlines():
        s = line.strip()
        if s.startswith("```"):
            if current is None:
                current, lang = [], s[3:].strip()
            else:
                if lang in ("sh", "bash"):
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(s)
    assert current is None, "unclosed code block"
    return blocks


def _built_here(svc: dict) -> bool:
    build = svc.get("build")
    return isinstance(build, dict) and build.get("target") in OUR_IMAGES


def _env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_every_service_of_the_cluster_is_there():
    expected = {"redis", "postgres", "migrate", "api", "controller", "worker"}
    assert expected <= set(SERVICES), f"missing: {expected - set(SERVICES)}"
    for name in ("migrate", "api", "controller"):
        assert SERVICES[name]["build"]["target"] == "api", name
    assert SERVICES["worker"]["build"]["target"] == "worker"


def test_redis_postgres_and_the_api_have_health_checks():
    def probe(name: str) -> str:
        test = SERVICES[name]["healthcheck"]["test"]
        return " ".join(test) if isinstance(test, list) else test

    assert "redis-cli ping" in probe("redis")
    assert "pg_isready" in probe("postgres")
    api = probe("api")
    assert "/healthz" in api and "urllib" in api  # python:3.11-slim has no curl
    assert "--appendonly yes" in " ".join(SERVICES["redis"]["command"])


def test_services_wait_for_what_they_need():
    def conditions(name: str) -> dict[str, str]:
        deps = SERVICES[name]["depends_on"]
        assert isinstance(deps, dict), f"{name}: depends_on without conditions"
        return {k: v["condition"] for k, v in deps.items()}

    migrated = {
        "migrate": "service_completed_successfully",
        "postgres": "service_healthy",
        "redis": "service_healthy",
    }
    assert conditions("api") == migrated
    assert conditions("controller") == migrated
    assert conditions("migrate") == {"postgres": "service_healthy"}
    assert conditions("worker") == {"redis": "service_healthy"}
    assert SERVICES["migrate"]["command"] == ["db", "upgrade"]
    assert SERVICES["migrate"].get("restart") == "no"


def test_data_lives_in_named_volumes():
    named = set(COMPOSE.get("volumes") or {})
    mounts = {}
    for name, svc in SERVICES.items():
        for mount in svc.get("volumes") or []:
            source, _, target = (mount if isinstance(mount, str) else "").partition(":")
            assert source in named, f"{name}: {mount!r} is not a named volume"
            mounts[(name, target.split(":")[0])] = source
    assert ("redis", "/data") in mounts
    assert ("postgres", "/var/lib/postgresql/data") in mounts
    assert ("api", "/data") in mounts and ("controller", "/data") in mounts


def test_the_worker_reserves_one_gpu():
    devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia"
        and (d.get("count") == 1 or len(d.get("device_ids") or []) == 1)
        and "gpu" in d.get("capabilities", [])
        for d in devices
    ), devices
    assert SERVICES["worker"]["command"][:3] == ["worker", "--queue", "cuda"]


def test_every_kernelmap_variable_is_a_setting():
    fields = {name.lower() for name in Settings.model_fields}
    used: dict[str, str] = {}
    for name, svc in SERVICES.items():
        for var in _env(svc):
            used[var] = f"docker-compose.yml: {name}"
    for stage, body in STAGES.items():
        for instr, rest in body:
            if instr == "ENV":
                for var in re.findall(r"(?:^|\s)(KERNELMAP_\w+)=", rest):
                    used[var] = f"Dockerfile: {stage}"
    for var in re.findall(r"\b(KERNELMAP_[A-Z_]+)\b", DOCS):
        used.setdefault(var, "docs/cluster.md")
    kernelmap_vars = {v: where for v, where in used.items() if v.upper().startswith("KERNELMAP_")}
    assert {"KERNELMAP_DATABASE_URL", "KERNELMAP_REDIS_URL", "KERNELMAP_DATA_DIR"} <= set(
        kernelmap_vars
    )
    unknown = {
        v: where
        for v, where in kernelmap_vars.items()
        if v[len("KERNELMAP_") :].lower() not in fields
    }
    assert not unknown, f"not fields of services.config.Settings: {unknown}"


def test_cluster_urls_name_the_cluster_services():
    env = _env(SERVICES["api"])
    assert env["KERNELMAP_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["KERNELMAP_DATABASE_URL"]
    assert env["KERNELMAP_REDIS_URL"] == "redis://redis:6379/0"
    assert _env(SERVICES["controller"]) == env == _env(SERVICES["migrate"])


@pytest.mark.parametrize("where,argv", command_lines(), ids=lambda x: None)
def test_every_kernelmap_command_line_parses(where, argv):
    try:
        build_parser().parse_args(argv)
    except (Exception, SystemExit) as e:
        pytest.fail(f"{where}: `kernelmap {shlex.join(argv)}` does not parse: {e}")


def test_the_documented_commands_are_all_checked():
    lines = {where.split(": ", 1)[0] for where, _ in command_lines()}
    assert lines == {"docker-compose.yml", "Dockerfile", "docs/cluster.md"}
    wanted = [
        ["serve", "--host", "0.0.0.0", "--port", "8000"],
        ["controller"],
        ["db", "upgrade"],
        ["worker", "--queue", "cuda"],
        ["keys", "create", "--role", "admin", "--name", "me"],
        ["keys", "create", "--role", "worker", "--name", "box1"],
    ]
    argvs = [argv for _, argv in command_lines()]
    for want in wanted:
        assert any(argv[: len(want)] == want for argv in argvs), want
    assert any(argv[:2] == ["worker", "--join"] and "--token" in argv for argv in argvs)


def test_the_dockerfile_has_api_and_worker_targets_running_kernelmap_as_non_root():
    for target in OUR_IMAGES:
        body = dict(STAGES[target])  # the last of each instruction wins, as in Docker
        if target == "worker":
            # Root in its container only to build each child's sandbox (which drops the child
            # to an unprivileged uid): compose grants it no capability beyond that.
            assert body.get("USER") == "root"
        else:
            assert body.get("USER") not in (None, "root", "0"), f"{target} runs as root"
        assert "KERNELMAP_DATA_DIR=/data" in " ".join(
            rest for instr, rest in STAGES[target] if instr == "ENV"
        ), target
        assert "kernelmap" in body.get("ENTRYPOINT", ""), target
    assert STAGES["api"][0][1].startswith("python:3.11-slim")
    assert "cuda" in STAGES["worker"][0][1]


def test_torch_is_pinned_as_in_the_makefile():
    pinned = re.search(r"torch==([\w.]+)", (ROOT / "Makefile").read_text()).group(1)
    assert global_args()["TORCH_VERSION"] == pinned
    runs = " ".join(rest for instr, rest in INSTRUCTIONS if instr == "RUN")
    assert '--index-url "${TORCH_CPU_INDEX}" "torch==${TORCH_VERSION}"' in runs
    assert global_args()["TORCH_CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert 'pip install "/src[cuda]"' in runs


def test_base_images_are_pinned_never_latest():
    images = [body[0][1] for body in STAGES.values() if body[0][1] not in STAGES]
    images += [svc["image"] for svc in SERVICES.values() if not _built_here(svc)]
    for image in images:
        name, _, tag = image.rpartition(":") if "@" not in image else (image, ":", "digest")
        assert name and "/" not in tag, f"{image}: no tag"
        assert tag != "latest", f"{image}: pin a version"


def test_both_images_get_every_package_and_the_build_context_keeps_them():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    ignored = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for stage in ("api-build", "worker-build"):
        copied = {rest.split()[0] for instr, rest in STAGES[stage] if instr == "COPY"}
        assert set(packages) | {"pyproject.toml"} <= copied, stage
    for path in [*packages, "pyproject.toml", "README.md"]:
        assert not any(fnmatch.fnmatch(path, p) for p in ignored), f"{path} is dockerignored"
    for secret in (".env", ".git", ".venv"):
        assert secret in ignored


def test_no_secret_is_baked_into_an_image():
    for instr, rest in INSTRUCTIONS:
        if instr in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY)", rest, re.I), rest
    assert "km_" not in DOCKERFILE


def test_only_the_api_is_published_and_the_worker_is_walled_off():
    published = {name for name, svc in SERVICES.items() if svc.get("ports")}
    assert published == {"api"}
    assert all(p.startswith("${API_BIND:-127.0.0.1}:") for p in SERVICES["api"]["ports"])
    worker = SERVICES["worker"]
    assert "KERNELMAP_DATABASE_URL" not in _env(worker)
    assert not set(worker["networks"]) & set(SERVICES["postgres"]["networks"])
    assert all(COMPOSE["networks"][n].get("internal") for n in worker["networks"])
    assert set(worker["networks"]) <= set(SERVICES["redis"]["networks"])


def test_the_entry_point_takes_commands_with_or_without_kernelmap(tmp_path):
    script = re.search(
        r"<<'EOF' /usr/local/bin/kernelmap-entrypoint\n(.*?)\nEOF\n", DOCKERFILE, re.S
    ).group(1)
    entry = tmp_path / "kernelmap-entrypoint"
    entry.write_text(script + "\n")
    fake = tmp_path / "kernelmap"  # stands in for the console script: prints its argv
    fake.write_text('#!/bin/sh\nprintf "%s|" "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}

    def run(*argv: str) -> str:
        out = subprocess.run(["sh", str(entry), *argv], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    expected = "keys|create|--role|admin|--name|me|"
    assert run("kernelmap", "keys", "create", "--role", "admin", "--name", "me") == expected
    assert run("keys", "create", "--role", "admin", "--name", "me") == expected
    assert run("worker", "--name", "kernelmap") == "worker|--name|kernelmap|"


def test_the_worker_gets_what_the_strict_sandbox_needs_and_nothing_more():
    for svc in (SERVICES["worker"], _documented_extra_worker()):
        assert svc["cap_drop"] == ["ALL"]
        assert set(svc["cap_add"]) == {
            "SYS_ADMIN",
            "SETUID",
            "SETGID",
            "CHOWN",
            "KILL",
            "DAC_OVERRIDE",
            "FOWNER",
        }
        opts = svc["security_opt"]
        assert any(o.startswith("no-new-privileges") for o in opts)
        assert any(o.replace("=", ":") == "apparmor:unconfined" for o in opts)
        assert "privileged" not in svc and not any("seccomp" in o for o in opts)
    api = SERVICES["api"]
    assert "cap_add" not in api and not api.get("privileged")


def _documented_extra_worker() -> dict:
    block = re.search(r"```yaml\n(.*?)```", DOCS, re.S).group(1)
    ((_, svc),) = yaml.safe_load(textwrap.dedent(block))["services"].items()
    return svc


def test_the_documented_extra_gpu_worker_is_like_the_worker_on_another_gpu():
    block = re.search(r"```yaml\n(.*?)```", DOCS, re.S).group(1)
    extra = yaml.safe_load(textwrap.dedent(block))
    ((name, svc),) = extra["services"].items()
    worker = SERVICES["worker"]
    assert svc["command"] == worker["command"] and svc["networks"] == worker["networks"]
    assert _env(svc).items() <= _env(worker).items()
    assert svc["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "device_ids": ["1"], "capabilities": ["gpu"]}
    ]
    assert {m.partition(":")[0] for m in svc["volumes"]} <= set(extra["volumes"])
