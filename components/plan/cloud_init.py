"""Cloud-init user data of a Swarm manager, built as a Python dict and dumped as `#cloud-config` YAML.

Pure functions, no Pulumi: SwarmCluster calls `render_user_data` inside one `Output.all(...).apply`, and
the tests validate the result with Debian's `cloud-init schema` and `shellcheck`. Each node gets:

- Docker Engine from Docker's apt repository at the pinned `docker_version` (never `curl | sh`). The
  repository's signing key ships beside this module (`docker-apt-key.asc`, Docker's published key with
  fingerprint 9DC8 5822 9FC7 DD38 854A E2D8 8D81 803C 0EBF CD88, checked by a test with gpg), so boot
  depends on no key server and the key cannot be swapped in transit; cloud-init stores it as a keyring
  that only this one source trusts (`signed-by=$KEY_FILE`). Installed by runcmd, after the NFS share
  is mounted, and held (`apt-mark hold`).
- `/etc/docker/daemon.json`: log rotation, and the API on the unix socket plus `tcp://0.0.0.0:2376` with
  `tlsverify` (clients need a certificate from our CA), and a systemd drop-in that drops `-H fd://`,
  which dockerd refuses next to `hosts` in daemon.json
  (https://docs.docker.com/engine/daemon/remote-access/#configuring-remote-access-with-daemonjson).
  The TLS files are written before the package is installed, so dockerd's first start already has them.
- unattended-upgrades for security updates (Ubuntu's default origins are the -security pocket only;
  Docker's repository is not one of them, so the pinned engine never moves by itself);
- the NFS share in /etc/fstab (`_netdev`) plus nfs-common, only when NFS storage is configured; dockerd
  then requires the mount (`RequiresMountsFor`), so containers never write to the bare mount point.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DOCKER_APT_KEY_FILE = Path(__file__).with_name("docker-apt-key.asc")
# Published at https://docs.docker.com/engine/install/ubuntu/ ("Verify that you now have the key ...").
DOCKER_APT_KEY_FINGERPRINT = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
DOCKER_PACKAGES = ("docker-ce", "docker-ce-cli")
DOCKER_API_PORT = 2376
TLS_DIR = "/etc/docker/tls"
DOCKER_HOSTS = ("unix:///var/run/docker.sock", f"tcp://0.0.0.0:{DOCKER_API_PORT}")
LOG_MAX_SIZE = "20m"
LOG_MAX_FILE = "5"
# The stock unit starts `dockerd -H fd:// --containerd=...`; `-H` on the command line conflicts with
# `hosts` in daemon.json (dockerd refuses to start; tests/components/engine proves it), so the drop-in
# restates ExecStart without it.
DOCKERD_EXEC_START = """\
[Service]
ExecStart=
ExecStart=/usr/bin/dockerd --containerd=/run/containerd/containerd.sock
"""
AUTO_UPGRADES = """\
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
"""
DOCKER_REPO_URL = "https://download.docker.com/linux"
# Image slug prefix -> path of Docker's repository (https://download.docker.com/linux/<distro>).
DOCKER_REPO_DISTROS = {"ubuntu-": "ubuntu", "debian-": "debian"}


@dataclass(frozen=True, kw_only=True)
class NodeTls:
    ca_cert_pem: str
    server_cert_pem: str
    server_key_pem: str


@dataclass(frozen=True, kw_only=True)
class NfsShare:
    host: str
    export_path: str
    mount_point: str


@dataclass(frozen=True, kw_only=True)
class CloudInitSettings:
    node_image: str  # DigitalOcean image slug, e.g. "ubuntu-24-04-x64"
    docker_version: str  # full apt version of docker-ce, e.g. "5:28.5.2-1~ubuntu.24.04~noble"
    tls: NodeTls
    nfs: NfsShare | None = None

    def __post_init__(self) -> None:
        docker_repo_distro(self.node_image)
        if not self.docker_version.strip() or any(c.isspace() for c in self.docker_version):
            raise ValueError(f"docker_version {self.docker_version!r} is not an apt version string")


def docker_repo_distro(node_image: str) -> str:
    for prefix, distro in DOCKER_REPO_DISTROS.items():
        if node_image.startswith(prefix):
            return distro
    raise ValueError(
        f"node image {node_image!r} is not supported: Docker's apt repository exists for "
        + ", ".join(f"{p}*" for p in DOCKER_REPO_DISTROS)
    )


def tls_paths(tls_dir: str = TLS_DIR) -> dict[str, str]:
    return {
        "tlscacert": f"{tls_dir}/ca.pem",
        "tlscert": f"{tls_dir}/server-cert.pem",
        "tlskey": f"{tls_dir}/server-key.pem",
    }


def daemon_config(*, tls_dir: str = TLS_DIR, hosts: tuple[str, ...] = DOCKER_HOSTS) -> dict[str, Any]:
    """/etc/docker/daemon.json; the real-dockerd test runs its daemons with this very dict."""
    return {
        "hosts": list(hosts),
        "tlsverify": True,
        **tls_paths(tls_dir),
        "log-driver": "json-file",
        "log-opts": {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILE},
    }


def fstab_entry(nfs: NfsShare) -> list[str]:
    # _netdev: mount after the network is up. No `nofail`: a node must not quietly run its registries
    # on the local disk below the mount point when the share is missing.
    return [f"{nfs.host}:{nfs.export_path}", nfs.mount_point, "nfs", "defaults,_netdev", "0", "0"]


def dockerd_drop_in(nfs: NfsShare | None) -> str:
    if nfs is None:
        return DOCKERD_EXEC_START
    # Never run containers (whose bind mounts live below the mount point) without the share, also
    # after a reboot: dockerd starts only once the share is mounted.
    return f"[Unit]\nRequiresMountsFor={nfs.mount_point}\n\n" + DOCKERD_EXEC_START


def runcmd(settings: CloudInitSettings) -> list[list[str]]:
    """Commands after the packages are installed (argument lists: cloud-init quotes each argument).

    Docker is installed here, not in `packages`, so that it starts only after the NFS share is mounted
    (cloud-init's mounts module runs before nfs-common is installed): once the Docker API answers on
    2376, the node is ready for the bootstrap and the registry services.
    """
    commands: list[list[str]] = []
    if settings.nfs is not None:
        commands += [["mkdir", "-p", settings.nfs.mount_point], ["mount", settings.nfs.mount_point]]
    pinned = [f"{name}={settings.docker_version}" for name in DOCKER_PACKAGES]
    commands += [
        ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", *pinned, "containerd.io"],
        # Security updates never move the engine; a manual `apt upgrade` must not either.
        ["apt-mark", "hold", *DOCKER_PACKAGES],
        ["systemctl", "enable", "--now", "unattended-upgrades"],
    ]
    return commands


def runcmd_script(commands: list[list[str]]) -> str:
    """The shell script cloud-init writes for runcmd (what shellcheck is run on)."""
    return "#!/bin/sh\n" + "".join(" ".join(shlex.quote(arg) for arg in cmd) + "\n" for cmd in commands)


def user_data_dict(settings: CloudInitSettings) -> dict[str, Any]:
    distro = docker_repo_distro(settings.node_image)
    tls = settings.tls
    paths = tls_paths()
    packages = ["unattended-upgrades"]
    if settings.nfs is not None:
        packages.append("nfs-common")
    data: dict[str, Any] = {
        "package_update": True,
        "ssh_pwauth": False,
        "apt": {
            "sources": {
                "docker.list": {
                    "source": f"deb [signed-by=$KEY_FILE] {DOCKER_REPO_URL}/{distro} $RELEASE stable",
                    "key": DOCKER_APT_KEY_FILE.read_text(),
                }
            }
        },
        "write_files": [
            {"path": paths["tlscacert"], "content": tls.ca_cert_pem, "permissions": "0644"},
            {"path": paths["tlscert"], "content": tls.server_cert_pem, "permissions": "0644"},
            {"path": paths["tlskey"], "content": tls.server_key_pem, "permissions": "0600"},
            {
                "path": "/etc/docker/daemon.json",
                "content": json.dumps(daemon_config(), indent=2) + "\n",
                "permissions": "0644",
            },
            {
                "path": "/etc/systemd/system/docker.service.d/owncr-hosts.conf",
                "content": dockerd_drop_in(settings.nfs),
                "permissions": "0644",
            },
            {"path": "/etc/apt/apt.conf.d/20auto-upgrades", "content": AUTO_UPGRADES, "permissions": "0644"},
        ],
        "packages": packages,
        "runcmd": runcmd(settings),
    }
    if settings.nfs is not None:
        data["mounts"] = [fstab_entry(settings.nfs)]
    return data


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PEMs, the key, daemon.json) as literal blocks: readable on the node."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_BlockDumper.add_representer(str, _represent_str)


def render_user_data(settings: CloudInitSettings) -> str:
    body = yaml.dump(user_data_dict(settings), Dumper=_BlockDumper, sort_keys=False, width=4096)
    return "#cloud-config\n" + body
