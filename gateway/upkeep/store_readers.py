"""What maintenance reads from the private registry's storage itself, because the registry API does not
tell it: when each tag was last pushed, every manifest revision of a repository (tagged or not), and
how many bytes the private store and each cache hold. `reader_for` picks the reader from the registry's
own `storage` config section, so maintenance reads exactly the store the registry writes.

Both readers follow Distribution's storage layout (registry/storage/paths.go), below each registry's
`rootdirectory`: `docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link` (rewritten
whenever the tag moves: its modification time is the tag's last push) and
`.../_manifests/revisions/sha256/<hex>/link`; caches live beside the private root
(gateway/render/registry_config.py: `/private`, `/cache/<host>`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

REPOSITORIES = "docker/registry/v2/repositories"  # below a registry's root, every storage driver
TAG_LINK = "current/link"


class StoreError(RuntimeError):
    """The storage is not one maintenance can read."""


def tags_dir(repository: str) -> str:
    return f"{REPOSITORIES}/{repository}/_manifests/tags"


def revisions_dir(repository: str) -> str:
    return f"{REPOSITORIES}/{repository}/_manifests/revisions/sha256"


def _root(driver: Mapping[str, Any]) -> str:
    return "/" + str(driver.get("rootdirectory", "")).strip("/")


class FilesReader:
    """Filesystem storage, read with find and stat through `run` (in the cluster: busybox in the
    maintenance registry's container; locally: this machine's)."""

    def __init__(self, root: str, run: Callable[[list[str]], bytes]) -> None:
        self.root = root.rstrip("/")  # the private registry's rootdirectory
        self.run = run
        self.times: dict[str, dict[str, datetime]] = {}

    def _stat(self, path: str, fmt: str, *find: str) -> list[tuple[str, str]]:
        script = f'[ -d "$1" ] || exit 0; find "$1" {" ".join(find)} -exec stat -c "{fmt} %n" {{}} +'
        out = self.run(["sh", "-c", script, "sh", path]).decode()
        return [tuple(line.split(" ", 1)) for line in out.splitlines() if line]  # type: ignore[misc]

    def tag_times(self, repository: str) -> dict[str, datetime]:
        if repository not in self.times:
            base = f"{self.root}/{tags_dir(repository)}"
            found = self._stat(base, "%Y", "-path", f"'*/{TAG_LINK}'", "-type", "f")
            self.times[repository] = {
                path.removeprefix(base + "/").removesuffix("/" + TAG_LINK): datetime.fromtimestamp(
                    int(mtime), UTC
                )
                for mtime, path in found
            }
        return self.times[repository]

    def revisions(self, repository: str) -> set[str]:
        base = f"{self.root}/{revisions_dir(repository)}"
        found = self._stat(base, "%s", "-mindepth", "2", "-maxdepth", "2", "-name", "link", "-type", "f")
        return {"sha256:" + path.removeprefix(base + "/").split("/")[0] for _, path in found}

    def _bytes(self, path: str) -> int:
        return sum(int(size) for size, _ in self._stat(path, "%s", "-type", "f"))

    def private_bytes(self) -> int:
        return self._bytes(self.root)

    def cache_bytes(self) -> dict[str, int]:
        caches = self.root.rsplit("/", 1)[0] + "/cache"  # registry_config: <storage>/private, /cache/<host>
        script = '[ -d "$1" ] && ls "$1" || true'
        hosts = self.run(["sh", "-c", script, "sh", caches]).decode().split()
        return {host: self._bytes(f"{caches}/{host}") for host in hosts}


class S3Reader:
    """S3 storage (R2), listed with the private registry's own keys (boto3, in this process only)."""

    def __init__(self, driver: Mapping[str, Any]) -> None:
        import boto3  # the maintenance workflow's dependency only

        self.bucket = str(driver["bucket"])
        self.prefix = _root(driver).strip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=str(driver["regionendpoint"]),
            region_name=str(driver.get("region") or "auto"),
            aws_access_key_id=str(driver["accesskey"]),
            aws_secret_access_key=str(driver["secretkey"]),
        )
        self.times: dict[str, dict[str, datetime]] = {}

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            yield from page.get("Contents", [])

    def _under(self, path: str) -> str:
        return f"{self.prefix}/{path}/".lstrip("/")

    def tag_times(self, repository: str) -> dict[str, datetime]:
        if repository not in self.times:
            base = self._under(tags_dir(repository))
            self.times[repository] = {
                o["Key"].removeprefix(base).removesuffix("/" + TAG_LINK): o["LastModified"]
                for o in self._objects(base)
                if o["Key"].endswith("/" + TAG_LINK)
            }
        return self.times[repository]

    def revisions(self, repository: str) -> set[str]:
        base = self._under(revisions_dir(repository))
        keys = (o["Key"].removeprefix(base) for o in self._objects(base))
        return {"sha256:" + k.split("/")[0] for k in keys if k.count("/") == 1 and k.endswith("/link")}

    def private_bytes(self) -> int:
        return sum(int(o["Size"]) for o in self._objects(f"{self.prefix}/"))

    def cache_bytes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for o in self._objects("cache/"):
            host = o["Key"].split("/")[1]
            sizes[host] = sizes.get(host, 0) + int(o["Size"])
        return sizes


def reader_for(storage: Mapping[str, Any], run: Callable[[list[str]], bytes]) -> FilesReader | S3Reader:
    if "s3" in storage:
        return S3Reader(storage["s3"])
    if "filesystem" in storage:
        return FilesReader(_root(storage["filesystem"]), run)
    raise StoreError(f"unsupported storage driver {sorted(storage)} in the private registry's config")
