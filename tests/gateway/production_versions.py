"""The versions production runs, read from the pinned images in Pulumi.yaml, and the check that a test
ran exactly those (the runner's `ready` line and `LocalGateway.versions` say what ran)."""

from __future__ import annotations

import re

import yaml

from gateway.local.binaries import Versions
from tests import ROOT

PULUMI_YAML = ROOT / "Pulumi.yaml"
# The njs series of the official nginx 1.30 alpine images (docker-nginx stable/alpine/Dockerfile:
# NJS_VERSION 1.0.x); the image tag does not carry it.
NJS_SERIES = "1.0."


def _image_version(key: str) -> str:
    images = yaml.safe_load(PULUMI_YAML.read_text())["config"]["images"]["default"]
    m = re.match(r"[^:]+:(\d+\.\d+\.\d+)", images[key])
    assert m, images[key]
    return m[1]


def assert_production(versions: Versions | None) -> None:
    """nginx of the pinned image's minor series (Debian's patch level differs), njs 1.0.x and exactly
    the pinned Distribution."""
    assert versions is not None
    nginx_series = _image_version("nginx").rsplit(".", 1)[0] + "."
    assert versions.nginx.startswith(nginx_series), f"{versions}: production runs nginx {nginx_series}x"
    assert versions.njs.startswith(NJS_SERIES), f"{versions}: production runs njs {NJS_SERIES}x"
    wanted = "v" + _image_version("registry")
    assert versions.distribution == wanted, f"{versions}: production runs Distribution {wanted}"


def parse_ready(line: str) -> tuple[dict[str, str], Versions]:
    """`ready registry=URL mirror=URL metrics=URL nginx=V njs=V distribution=V` -> (URLs, versions)."""
    assert line.startswith("ready ") and line.endswith("\n"), line
    fields = dict(item.split("=", 1) for item in line.split()[1:])
    assert list(fields) == ["registry", "mirror", "metrics", "nginx", "njs", "distribution"], line
    return (
        {door: fields[door] for door in ("registry", "mirror", "metrics")},
        Versions(nginx=fields["nginx"], njs=fields["njs"], distribution=fields["distribution"]),
    )
