"""The managers' cloud-init: valid for Debian's `cloud-init schema`, shellcheck-clean, pinned, TLS on.

The Docker apt key file is checked against Docker's published fingerprint by computing the OpenPGP v4
fingerprint here (RFC 4880 §12.2), so the check needs no gpg binary.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components.plan.cloud_init import (
    DOCKER_APT_KEY_FILE,
    DOCKER_APT_KEY_FINGERPRINT,
    CloudInitSettings,
    NfsShare,
    NodeTls,
    render_user_data,
    runcmd_script,
)

VERSION = "5:28.5.2-1~ubuntu.24.04~noble"
TLS = NodeTls(
    ca_cert_pem="-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n",
    server_cert_pem="-----BEGIN CERTIFICATE-----\nU0VSVkVS\n-----END CERTIFICATE-----\n",
    server_key_pem="-----BEGIN PRIVATE KEY-----\nS0VZ\n-----END PRIVATE KEY-----\n",
)
NFS = NfsShare(host="10.20.0.50", export_path="/1234-share", mount_point="/mnt/owncr")
DROP_IN = "/etc/systemd/system/docker.service.d/owncr-hosts.conf"
# DigitalOcean rejects user data over 64 KiB.
USER_DATA_LIMIT = 64 * 1024


def settings(**overrides: object) -> CloudInitSettings:
    values: dict[str, object] = {"node_image": "ubuntu-24-04-x64", "docker_version": VERSION, "tls": TLS}
    values.update(overrides)
    return CloudInitSettings(**values)  # type: ignore[arg-type]


def parsed(rendered: str) -> dict:
    assert rendered.startswith("#cloud-config\n")
    return yaml.safe_load(rendered)


def files(data: dict) -> dict[str, dict]:
    return {f["path"]: f for f in data["write_files"]}


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="needs Debian's cloud-init")
@pytest.mark.parametrize("nfs", [None, NFS], ids=["r2", "nfs"])
def test_user_data_passes_cloud_init_schema(tmp_path: Path, nfs: NfsShare | None) -> None:
    path = tmp_path / "user-data"
    path.write_text(render_user_data(settings(nfs=nfs)))
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="needs Debian's cloud-init")
def test_schema_check_catches_a_broken_document(tmp_path: Path) -> None:
    data = parsed(render_user_data(settings(nfs=NFS)))
    data["mounts"][0][3] = 5  # fstab options must be a string
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\n" + yaml.safe_dump(data))
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "mounts.0.3: 5 is not of type 'string'" in result.stderr, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck")
@pytest.mark.parametrize("nfs", [None, NFS], ids=["r2", "nfs"])
def test_runcmd_script_passes_shellcheck(tmp_path: Path, nfs: NfsShare | None) -> None:
    data = parsed(render_user_data(settings(nfs=nfs)))
    # Argument lists only: cloud-init quotes each argument, no shell string is ever interpreted.
    assert all(isinstance(cmd, list) for cmd in data["runcmd"])
    script = tmp_path / "runcmd"
    script.write_text(runcmd_script(data["runcmd"]))
    result = subprocess.run(["shellcheck", "--shell=sh", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_docker_comes_pinned_from_dockers_signed_repository() -> None:
    rendered = render_user_data(settings())
    data = parsed(rendered)
    (install,) = [cmd for cmd in data["runcmd"] if "install" in cmd]
    assert install[:5] == ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y"]
    assert {f"docker-ce={VERSION}", f"docker-ce-cli={VERSION}"} <= set(install)
    assert not [arg for arg in install if arg.startswith("docker-") and "=" not in arg], (
        "every docker-* pinned"
    )
    assert ["apt-mark", "hold", "docker-ce", "docker-ce-cli"] in data["runcmd"]
    source = data["apt"]["sources"]["docker.list"]
    assert (
        source["source"]
        == "deb [signed-by=$KEY_FILE] https://download.docker.com/linux/ubuntu $RELEASE stable"
    )
    assert source["key"] == DOCKER_APT_KEY_FILE.read_text()
    assert not re.search(r"(curl|wget)[^\n]*\|\s*(ba|z)?sh", rendered), "never pipe a download into a shell"
    assert "get.docker.com" not in rendered


def test_debian_images_use_dockers_debian_repository() -> None:
    source = parsed(render_user_data(settings(node_image="debian-12-x64")))["apt"]["sources"]["docker.list"]
    assert "https://download.docker.com/linux/debian $RELEASE" in source["source"]


def openpgp_v4_fingerprint(armored: str) -> str:
    """Fingerprint of the first (primary) public-key packet of an ASCII-armored key, CRC checked."""
    lines = armored.strip().splitlines()
    body_start = lines.index("") + 1
    checksum_line = next(i for i, line in enumerate(lines) if line.startswith("="))
    raw = base64.b64decode("".join(lines[body_start:checksum_line]))
    crc = 0xB704CE
    for byte in raw:
        crc ^= byte << 16
        for _ in range(8):
            crc = (crc << 1) ^ 0x1864CFB if crc & 0x800000 else crc << 1
    assert (crc & 0xFFFFFF).to_bytes(3, "big") == base64.b64decode(lines[checksum_line][1:]), "armor CRC"
    header = raw[0]
    if header & 0x40:  # new-format packet header
        tag, length, offset = header & 0x3F, raw[1], 2
        if 192 <= length < 224:
            length, offset = ((length - 192) << 8) + raw[2] + 192, 3
        elif length == 255:
            length, offset = int.from_bytes(raw[2:6], "big"), 6
    else:  # old format: length type in the low two bits
        tag, length_bytes = (header >> 2) & 0x0F, 1 << (header & 0x03)
        length, offset = int.from_bytes(raw[1 : 1 + length_bytes], "big"), 1 + length_bytes
    assert tag == 6, "the first packet must be a public key"
    body = raw[offset : offset + length]
    assert body[0] == 4, "version 4 key"
    return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()  # noqa: S324


def test_shipped_docker_key_has_the_published_fingerprint() -> None:
    assert openpgp_v4_fingerprint(DOCKER_APT_KEY_FILE.read_text()) == DOCKER_APT_KEY_FINGERPRINT


def test_a_tampered_key_fails_the_fingerprint_check() -> None:
    lines = DOCKER_APT_KEY_FILE.read_text().splitlines()
    lines[3] = ("B" if lines[3][0] != "B" else "C") + lines[3][1:]
    with pytest.raises(AssertionError, match="armor CRC"):
        openpgp_v4_fingerprint("\n".join(lines))


def test_daemon_json_has_log_rotation_and_tls_on_2376() -> None:
    written = files(parsed(render_user_data(settings())))
    daemon = json.loads(written["/etc/docker/daemon.json"]["content"])
    assert daemon["hosts"] == ["unix:///var/run/docker.sock", "tcp://0.0.0.0:2376"]
    assert daemon["tlsverify"] is True
    assert daemon["log-driver"] == "json-file"
    assert set(daemon["log-opts"]) == {"max-size", "max-file"}
    for key, content in (
        ("tlscacert", TLS.ca_cert_pem),
        ("tlscert", TLS.server_cert_pem),
        ("tlskey", TLS.server_key_pem),
    ):
        assert written[daemon[key]]["content"] == content
    assert written[daemon["tlskey"]]["permissions"] == "0600"
    drop_in = written[DROP_IN]["content"]
    exec_starts = [line for line in drop_in.splitlines() if line.startswith("ExecStart=")]
    assert exec_starts[0] == "ExecStart=" and "-H" not in exec_starts[1] and "fd://" not in drop_in


def test_unattended_security_upgrades_are_on() -> None:
    data = parsed(render_user_data(settings()))
    assert "unattended-upgrades" in data["packages"]
    periodic = files(data)["/etc/apt/apt.conf.d/20auto-upgrades"]["content"]
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic


def test_nfs_only_when_configured() -> None:
    without = parsed(render_user_data(settings()))
    assert "mounts" not in without and "nfs-common" not in without["packages"]
    assert not any("mount" in cmd for cmd in without["runcmd"])
    assert "RequiresMountsFor" not in files(without)[DROP_IN]["content"]
    with_nfs = parsed(render_user_data(settings(nfs=NFS)))
    assert with_nfs["mounts"] == [
        ["10.20.0.50:/1234-share", "/mnt/owncr", "nfs", "defaults,_netdev", "0", "0"]
    ]
    assert "nfs-common" in with_nfs["packages"]
    steps = with_nfs["runcmd"]
    install = next(i for i, cmd in enumerate(steps) if "install" in cmd)
    assert steps.index(["mount", "/mnt/owncr"]) < install, "Docker must start only once the share is mounted"
    assert "RequiresMountsFor=/mnt/owncr\n" in files(with_nfs)[DROP_IN]["content"]


def test_rendering_is_deterministic_and_fits_digitalocean_limit() -> None:
    first, second = render_user_data(settings(nfs=NFS)), render_user_data(settings(nfs=NFS))
    assert first == second
    assert len(first.encode()) < USER_DATA_LIMIT


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"node_image": "fedora-39-x64"}, "fedora-39-x64"),
        ({"docker_version": ""}, "apt version"),
        ({"docker_version": "5:28 && reboot"}, "apt version"),
    ],
)
def test_bad_settings_are_rejected(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings(**overrides)
