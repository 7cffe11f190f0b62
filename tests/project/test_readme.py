"""The README and docs/ stay true: the configuration table is generated from Pulumi.yaml
(`python -m tests.project.test_readme` prints it; docs/configuration.md must hold exactly that text), the
outputs table names exactly what __main__.py exports, every docs page says whom it is for and links back,
every link between them resolves, and the README stays a front page (short, no internal markers).
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 200
PAGES = ("configuration", "deploy", "operations", "architecture", "local", "benchmarks", "testing", "ci",
         "security", "troubleshooting", "blob-redirects", "oci", "metrics")  # fmt: skip


def page(name: str) -> str:
    return (DOCS / f"{name}.md").read_text(encoding="utf-8")


def heading_section(text: str, heading: str) -> str:
    """From `## heading` to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no section {heading!r}"
    return match.group(1)


def _type(decl: dict[str, Any]) -> str:
    if decl.get("type") == "array":
        return f"list of {decl['items']['type']}s"
    kind = {None: "object"}.get(decl.get("type"), decl.get("type"))
    if decl.get("type") is None and isinstance(decl.get("default"), str):
        kind = "string"
    return f"{kind}, secret" if decl.get("secret") else str(kind)


def _default(decl: dict[str, Any]) -> str:
    if "default" not in decl:
        return "**required**"
    value = decl["default"]
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, dict)):
        return f"`{json.dumps(value, separators=(', ', ': '))}`"
    return f'`"{value}"`' if value == "" else f"`{value}`"


def config_table() -> str:
    """The configuration table, generated from Pulumi.yaml (owncr keys, in file order)."""
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text(encoding="utf-8"))
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, decl in project["config"].items():
        if ":" in key:
            continue
        description = decl["description"].replace("|", "\\|")
        rows.append(f"| `{key}` | {_type(decl)} | {_default(decl)} | {description} |")
    return "\n".join(rows) + "\n"


def exported_names() -> set[str]:
    # The storage components export their own outputs (components/storage.py, RegistryStorage.export).
    source = "".join((ROOT / f).read_text(encoding="utf-8") for f in ("__main__.py", "components/storage.py"))
    return set(re.findall(r'pulumi\.export\(\s*"([a-z0-9_]+)"', source))


def table_first_column(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", text, re.M)]


def test_configuration_table_is_generated_from_pulumi_yaml():
    assert config_table() in page("configuration"), "regenerate: python -m tests.project.test_readme"


def test_configuration_table_lists_each_key_once():
    keys = table_first_column(heading_section(page("configuration"), "Configuration"))
    assert len(keys) == len(set(keys))


def test_outputs_table_names_exactly_the_exports():
    names = table_first_column(heading_section(page("configuration"), "Outputs"))
    assert len(names) == len(set(names))
    assert set(names) == exported_names()
    assert all(re.fullmatch(r"[a-z0-9_]+", n) for n in names)  # snake_case: outputs are an API


def test_exported_names_are_found():
    # The regex above must see the program's exports, or the previous test would pass vacuously.
    assert {"registry_url", "mirror_url", "containerd_hosts_toml"} <= exported_names()


def test_prerequisites_list_the_cloudflare_token_permissions():
    text = page("deploy").replace("\\|", "|")  # pipes are escaped inside the table
    for permission in (
        "Zone | DNS | Edit",
        "Account | Workers R2 Storage | Edit",
        "User | API Tokens | Edit",
    ):
        assert permission in text, permission


def test_the_readme_is_a_front_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "<!--" not in text
    for name in PAGES:
        assert f"docs/{name}.md" in text, f"the README links no docs/{name}.md"


def test_every_docs_page_says_whom_it_is_for_and_links_back():
    assert sorted(p.stem for p in DOCS.glob("*.md")) == sorted(PAGES)
    for name in PAGES:
        lines = page(name).splitlines()
        assert lines[0].startswith("# ") and lines[2].startswith("*For "), name
        assert "[README](../README.md)" in lines[2], name


def test_every_relative_link_resolves():
    for path in [README, *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


if __name__ == "__main__":
    print(config_table(), end="")
