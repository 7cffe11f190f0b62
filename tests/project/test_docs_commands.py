"""Every command the README and docs/ show (their ```sh blocks) is either checked here against the code
it drives, or named with the test that runs it, so the docs cannot drift from the product.

Checked here: `python -m gateway run|maintenance|status`, `python -m components.cli.status` and
`python -m gateway.bench*` command lines parse with the real
argument parsers; `pulumi config set` keys exist in Pulumi.yaml (or are provider keys); `pulumi stack
output` names are exports; `scripts/...` and `.ci/run` exist and are executable. Other programs are
clients or tools whose use the named tests exercise.
"""

from __future__ import annotations

import importlib
import re
import shlex

import pytest
import yaml

from components.cli import status
from gateway.__main__ import parse_args as gateway_args
from tests import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROVIDER_KEYS = {"digitalocean:token", "cloudflare:apiToken"}
# Programs the docs show whose use is exercised elsewhere (and where).
EXERCISED = {
    "docker": "tests/gateway/test_clients_docker.py (login, push, pull through the doors)",
    "skopeo": "tests/gateway/test_clients_registry.py, test_clients_mirror.py",
    "ctr": "tests/gateway/test_clients_mirror.py, test_clients_registry.py",
    "ssh": "documented access only (cloud nodes; the firewall rule: tests/components/test_program.py)",
    "export": "shell",
    "openssl": "shell (a random password)",
    "python3": "policy pack venv (tests/policy/test_policy_pack.py runs the pack)",
    "policy/venv/bin/pip": "tests/policy/test_policy_pack.py",
}
# `python -m gateway.bench` runs gateway/bench/__main__.py, the pull benchmark.
BENCHMARKS = {"gateway.bench": "gateway.bench.pull", "gateway.bench.redirect": "gateway.bench.redirect",
              "gateway.bench.fleet": "gateway.bench.fleet"}  # fmt: skip
PULUMI_VERBS = {"login", "stack", "up", "preview", "config", "refresh", "install", "destroy", "state"}


def commands() -> list[tuple[str, list[str]]]:
    """(doc file, argv) of every command in every ```sh block."""
    found = []
    for path in DOCS:
        for block in re.findall(r"```sh\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
            text = re.sub(r"\\\n\s*", " ", block)
            for line in text.splitlines():
                line = re.split(r"\s+#\s", " " + line, maxsplit=1)[0].strip()
                line = re.sub(r"\[(--[^\]]+)\]", r"\1", line)  # optional arguments as shown: [--flag VALUE]
                if not line or line.startswith("#"):
                    continue
                for part in re.split(r"\s*(?:&&|\||;)\s*", line):
                    argv = shlex.split(part)
                    while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):
                        argv = argv[1:]
                    if argv:
                        found.append((path.name, argv))
    return found


def _config_keys() -> set[str]:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text(encoding="utf-8"))
    return {key if ":" in key else f"owncr:{key}" for key in project["config"]}


def _exports() -> set[str]:
    return set(re.findall(r'pulumi\.export\(\s*"([a-z0-9_]+)"', (ROOT / "__main__.py").read_text()))


def check(argv: list[str]) -> None:
    program = argv[0]
    if argv[:3] == ["python", "-m", "gateway"] and argv[3:4] in (["run"], ["maintenance"], ["status"]):
        # the runs themselves: tests/gateway/upkeep/test_maintenance.py, tests/gateway/test_metrics.py
        gateway_args(argv[3:])
    elif argv[:3] == ["python", "-m", "components.cli.status"]:
        status.parse_args(argv[3:])  # run on a live swarm: tests/services/test_swarm_maintenance.py
    elif argv[:2] == ["python", "-m"] and argv[2] in BENCHMARKS:
        importlib.import_module(BENCHMARKS[argv[2]]).parse_args(argv[3:])
    elif argv[:3] == ["python", "-m", "moto.server"]:
        pass  # as `python -m gateway.bench.redirect` starts it (tests/gateway/test_clients_bench.py)
    elif program == "pulumi":
        verb = argv[1]
        assert verb in PULUMI_VERBS, argv
        if verb == "config" and argv[2] in ("set", "get"):
            keys = [a for a in argv[3:] if not a.startswith("-") and a not in ("local", "dev", "prod")]
            key = keys[0].split(".")[0]
            full = key if ":" in key else f"owncr:{key}"
            assert full in _config_keys() | PROVIDER_KEYS, f"no config key {full}"
        if verb == "stack" and argv[2] == "output":
            names = [a for a in argv[3:] if not a.startswith("-") and a not in ("local", "dev", "prod")]
            assert names and names[0] in _exports(), f"no stack output {names}"
    elif program.startswith(("scripts/", ".ci/")):
        path = ROOT / program
        assert path.is_file() and path.stat().st_mode & 0o111, f"{program} is not an executable file"
    else:
        assert program in EXERCISED, f"a command the docs show that no test covers: {argv}"


def test_the_docs_show_commands() -> None:
    shown = commands()
    assert len(shown) > 20
    assert any(a[:4] == ["python", "-m", "gateway", "run"] for _, a in shown)


@pytest.mark.parametrize(("doc", "argv"), commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_every_shown_command_matches_the_product(doc: str, argv: list[str]) -> None:
    try:
        check(argv)
    except SystemExit as err:  # argparse refusing a documented command line
        pytest.fail(f"{doc}: {' '.join(argv)}: the parser refuses it ({err})")


def test_the_check_can_fail() -> None:
    with pytest.raises(SystemExit) as refused:
        gateway_args(["run", "--data", "data", "--no-such-flag"])
    assert refused.value.code == 2  # argparse's usage error, not a clean exit
    with pytest.raises(SystemExit) as refused:
        gateway_args(["maintenance", "--data", "data", "--dryrun"])
    assert refused.value.code == 2
    with pytest.raises(SystemExit) as refused:
        status.parse_args(["--stak", "prod"])
    assert refused.value.code == 2
    with pytest.raises(AssertionError, match="no config key owncr:nope"):
        check(["pulumi", "config", "set", "nope", "1"])
    with pytest.raises(AssertionError, match="no test covers"):
        check(["curl", "https://example.com"])
