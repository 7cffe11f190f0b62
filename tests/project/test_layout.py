"""The folders' import direction (docs/architecture.md, "Where the code lives"): each package imports only
the packages below it, `gateway/` never imports Pulumi, `components` or `settings`, and the engine's
programs only the standard library. Read from the code's own import statements (ast), every module."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests import ROOT

GATEWAY_BASE = ("gateway.config", "gateway.names")
# Rules by module: a key is a module prefix ("=name": that module only); a module may import the modules
# of its own rule and of the rules listed. The longest matching key decides.
ALLOWED: dict[str, tuple[str, ...]] = {
    "=gateway": (),  # the package's docstring
    "gateway.config": ("gateway.names",),
    "gateway.names": (),
    "gateway.render": GATEWAY_BASE,
    "gateway.local": (*GATEWAY_BASE, "gateway.render"),
    "gateway.upkeep": (*GATEWAY_BASE, "gateway.render", "gateway.local"),
    "gateway.bench": (*GATEWAY_BASE, "gateway.render", "gateway.local"),
    "gateway.__main__": ("=gateway", *GATEWAY_BASE, "gateway.render", "gateway.local", "gateway.upkeep"),
    "=components": (),  # physical_name, the one naming rule for cloud-side names
    "components.engine": ("=components",),
    "components.plan": (
        "=components",
        "components.engine",
        *GATEWAY_BASE,
        "gateway.render",
        "gateway.upkeep",
    ),
    "components.cli": (
        "=components",
        "components.plan",
        "components.engine",
        *GATEWAY_BASE,
        "gateway.render",
        "gateway.upkeep",
    ),  # fmt: skip
    "components": (
        "=components",
        "components.plan",
        "components.engine",
        *GATEWAY_BASE,
        "gateway.render",
        "=settings",
    ),  # fmt: skip
    "=settings": (*GATEWAY_BASE, "gateway.upkeep"),
    "=__main__": ("=settings", "=components", "components", "components.plan"),
    "policy": (),
}
PROJECT = ("gateway", "components", "settings", "__main__", "policy")
BANNED = {"gateway": ("pulumi", "components", "settings"), "components.engine": ("pulumi", "yaml", "gateway")}


def rule_for(module: str, keys: object = ALLOWED) -> str | None:
    exact = f"={module}"
    if exact in ALLOWED and keys is ALLOWED:
        return exact
    prefixes = [k for k in keys if not k.startswith("=") and (module == k or module.startswith(k + "."))]  # type: ignore[union-attr]
    return max(prefixes, key=len) if prefixes else None


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(source: str) -> set[str]:
    """Every module the source imports (`from pkg import x`: pkg.x when that is a module, else pkg)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if is_module(sub) else node.module)
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def violations(module: str, source: str) -> list[str]:
    own = rule_for(module)
    assert own is not None, f"{module}: no rule in ALLOWED (and no row in docs/architecture.md's map)"
    found = []
    banned = BANNED[key] if (key := rule_for(module, BANNED)) else ()
    for name in sorted(imports_of(source)):
        against_rule = name.split(".")[0] in PROJECT and rule_for(name) not in (own, *ALLOWED[own])
        if against_rule or any(name == b or name.startswith(b + ".") for b in banned):
            found.append(f"{module} imports {name}")
    return found


def project_modules() -> list[Path]:
    files = [ROOT / "__main__.py", ROOT / "settings.py"]
    for package in ("gateway", "components", "policy"):
        files += sorted((ROOT / package).rglob("*.py"))
    return files


@pytest.mark.parametrize("path", project_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path: Path) -> None:
    assert violations(module_name(path), path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("module", "source", "caught"),
    [
        ("gateway.render.nginx", "from gateway.local import runner", "gateway.local.runner"),
        ("gateway.render.nginx", "from gateway import local", "gateway.local"),
        ("gateway.upkeep.status", "import pulumi", "pulumi"),
        ("gateway.config", "from components import physical_name", "components"),
        ("components.engine.rollout", "from gateway.config import DOCKER_HUB", "gateway.config"),
        ("components.engine.rollout", "import yaml", "yaml"),
        (
            "components.plan.swarm_specs",
            "from components.cli import maintenance",
            "components.cli.maintenance",
        ),
        ("components.plan.swarm_specs", "from components import network", "components.network"),
        ("components.network", "from components.cli import status", "components.cli.status"),
        ("settings", "import components.network", "components.network"),
    ],
)
def test_the_rule_catches_an_import_against_the_direction(module: str, source: str, caught: str) -> None:
    assert f"{module} imports {caught}" in violations(module, source)


def test_the_rule_lets_a_package_import_what_is_below_it() -> None:
    source = "from gateway.render import layout\nfrom gateway.config import GatewaySettings\nimport yaml\n"
    assert violations("gateway.upkeep.maintenance", source) == []
    assert violations("components.plan.swarm_specs", "from components import physical_name") == []


def test_engine_programs_import_only_the_standard_library() -> None:
    for path in sorted((ROOT / "components" / "engine").glob("*.py")):
        for name in imports_of(path.read_text(encoding="utf-8")):
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or name.startswith("components.engine"), (
                f"{path.name}: {name}"
            )
