"""Stand-in images for the deployed nginx and Distribution images, built from the versions production runs.

There is no registry to pull `nginx@sha256:...` or `registry@sha256:...` from here, and `docker build` needs
a base image. So each stand-in is a root filesystem written as a tar from Python (the binaries, every shared
library `ldd` names, the users and directories the binaries expect) and loaded with `docker import`. The
binaries come from what scripts/install-tools installed: nginx 1.30 + njs 1.0 (and curl, wget, cat) from
its Debian sid root, and the static Distribution v3.1.1 binary, as the pinned images carry them.

The layout mimics the official images where the rendered files depend on it:
- nginx: `/usr/sbin/nginx`, the njs module in `/usr/lib/nginx/modules` (reachable as `modules/...` from
  both the official prefix `/etc/nginx` and Debian's `/usr/share/nginx`), the `nginx` user, and `curl`,
  which the official image ships and the health check uses;
- both: `cat`, so the test can read a mounted file back (both official images have one);
- nginx: `sh`, `sleep` and `rm` for the drain wrapper, `mkdir` and `chown` for the store's directory,
  and the official image's STOPSIGNAL (SIGQUIT).
- registry: the binary at `/bin/registry` (the official image's entrypoint) and `wget`, which the official
  (Alpine/busybox) image ships and the health check uses; busybox's nc, find, stat and ls, which
  maintenance runs in it.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.local.binaries import TOOLS_SID, default_registry

# The image's /etc/passwd (no password in it).
USERS = (
    "root:x:0:0:root:/root:/bin/false\n"
    "www-data:x:33:33:www-data:/var/www:/bin/false\n"
    "nginx:x:101:101:nginx:/nonexistent:/bin/false\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nwww-data:x:33:\nnginx:x:101:\nnogroup:x:65534:\n"
# glibc reads hosts from files, then DNS (Docker's embedded resolver answers service names).
NSSWITCH = "hosts: files dns\n"
BUSYBOX = "/bin/busybox"  # Debian's busybox-static (.ci/run installs it)
BUSYBOX_APPLETS = ("nc", "find", "stat", "ls")
TMP = "/tmp"  # noqa: S108 (the image's own /tmp, not this machine's)


@dataclass(frozen=True)
class Rootfs:
    """What goes into a stand-in image: files of a source root copied as-is (binaries with the libraries
    `ldd` names inside that root), files of this machine, and extras."""

    root: str  # the filesystem `binaries` and `files` are taken from (sid's, from scripts/install-tools)
    binaries: dict[str, str]  # path in the image -> path in `root`
    files: dict[str, str]  # path in the image -> file in `root` copied verbatim (no ldd)
    symlinks: dict[str, str]  # path in the image -> link target
    directories: tuple[str, ...]
    host_files: dict[str, str] = field(default_factory=dict)  # path in the image -> static host binary


def nginx_rootfs() -> Rootfs:
    return Rootfs(
        root=str(TOOLS_SID),
        binaries={
            "/usr/sbin/nginx": "/usr/sbin/nginx",
            "/usr/lib/nginx/modules/ngx_http_js_module.so": "/usr/lib/nginx/modules/ngx_http_js_module.so",
            "/usr/bin/curl": "/usr/bin/curl",
            "/bin/cat": "/bin/cat",
            # The drain wrapper production starts nginx under (gateway/render/drain.sh): the official
            # image's busybox sh, sleep and rm.
            "/bin/sh": "/bin/dash",
            "/bin/sleep": "/bin/sleep",
            "/bin/rm": "/bin/rm",
            # The command's first step, which makes the store's directory the workers' (bundle.py):
            # the official image's busybox mkdir and chown.
            "/bin/mkdir": "/bin/mkdir",
            "/bin/chown": "/bin/chown",
        },
        files={"/etc/nginx/mime.types": "/etc/nginx/mime.types"},
        symlinks={
            "/etc/nginx/modules": "/usr/lib/nginx/modules",
            "/usr/share/nginx/modules": "/usr/lib/nginx/modules",
        },
        directories=(
            "/var/log/nginx",
            "/var/lib/nginx",
            "/var/cache/nginx",
            "/run",
            TMP,
            "/etc/nginx/conf.d",
        ),
    )


def registry_rootfs() -> Rootfs:
    return Rootfs(
        root=str(TOOLS_SID),
        binaries={
            "/usr/bin/wget": "/usr/bin/wget",
            "/bin/cat": "/bin/cat",
            # The drain wrapper (gateway/render/drain.sh): the official (Alpine) image's busybox sh and sleep.
            "/bin/sh": "/bin/dash",
            "/bin/sleep": "/bin/sleep",
        },
        files={},
        # What maintenance runs in the official (Alpine) image: busybox's nc, find, stat and ls
        # (components/cli/maintenance.py); here Debian's static busybox.
        symlinks={f"/bin/{applet}": "busybox" for applet in BUSYBOX_APPLETS},
        directories=("/var/lib/registry", "/etc/distribution", "/etc/docker/registry", TMP),
        # Static (CGO_ENABLED=0), as in the official image: no libraries to follow.
        host_files={"/bin/registry": default_registry(), "/bin/busybox": BUSYBOX},
    )


def shared_libraries(root: str, binary: str) -> list[str]:
    """Paths in `root` of every library (and the dynamic loader) `ldd` resolves there for a binary."""
    out = subprocess.run(["chroot", root, "ldd", binary], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.append(parts[2])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def _add_bytes(tar: tarfile.TarFile, path: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(path.lstrip("/"))
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, path: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(path.lstrip("/"))
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _parents(paths: Iterable[str]) -> list[str]:
    dirs: set[str] = set()
    for p in paths:
        d = os.path.dirname(p)
        while d not in ("/", ""):
            dirs.add(d)
            d = os.path.dirname(d)
    return sorted(dirs)


def rootfs_tar(spec: Rootfs) -> bytes:
    """The stand-in's root filesystem as an uncompressed tar."""

    def in_root(path: str) -> str:
        return os.path.join(spec.root, path.lstrip("/"))

    copies = {target: in_root(source) for target, source in spec.files.items()} | spec.host_files
    for target, source in spec.binaries.items():
        copies[target] = in_root(source)
        for lib in shared_libraries(spec.root, source):
            copies.setdefault(lib, in_root(lib))
    copies_paths = list(copies) + list(spec.symlinks)
    extra = {"/etc/passwd": USERS, "/etc/group": GROUP, "/etc/nsswitch.conf": NSSWITCH}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in sorted(set(_parents([*copies_paths, *extra])) | set(spec.directories)):
            _add_dir(tar, d, 0o1777 if d == TMP else 0o755)
        for target, source in sorted(copies.items()):
            with open(source, "rb") as f:
                _add_bytes(tar, target, f.read(), 0o755)
        for target, text in extra.items():
            _add_bytes(tar, target, text.encode(), 0o644)
        for link, dest in spec.symlinks.items():
            info = tarfile.TarInfo(link.lstrip("/"))
            info.type = tarfile.SYMTYPE
            info.linkname = dest
            tar.addfile(info)
    return buf.getvalue()


# What the official nginx image's Dockerfile sets and Swarm stops its tasks with.
NGINX_STOPSIGNAL = "STOPSIGNAL SIGQUIT"


def docker_import(docker: list[str], spec: Rootfs | bytes, ref: str, *changes: str) -> str:
    """Load the stand-in (a Rootfs, or its tar already built) into the engine that `docker` (an argv
    prefix) talks to, with Dockerfile `changes` (e.g. NGINX_STOPSIGNAL); returns `ref`."""
    tar = spec if isinstance(spec, bytes) else rootfs_tar(spec)
    flags = [arg for change in changes for arg in ("--change", change)]
    subprocess.run([*docker, "import", *flags, "-", ref], input=tar, check=True, capture_output=True)
    return ref
