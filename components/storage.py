"""Blob storage of the registries: an R2 bucket with a token scoped to it, or a DigitalOcean NFS share.

`R2Storage` (`owncr:storage:R2Storage`) creates the bucket and a Cloudflare user API token whose single
policy allows only "Workers R2 Storage Bucket Item Read" and "... Item Write" (object read/write, no bucket
administration) on exactly this bucket, and turns it into S3 credentials as Cloudflare documents
(https://developers.cloudflare.com/r2/api/tokens/): access key id = token id, secret access key = SHA-256
hex of the token value. Exposes `bucket_name`, `s3_endpoint`, `access_key_id`, `secret_access_key` (secret).
The permission-group ids are looked up at run time by name (they are Cloudflare's, not ours). The bucket's
lifecycle rule aborts multipart uploads left incomplete for ABORT_MULTIPART_DAYS (an abandoned push:
Distribution's upload purger deletes the `_uploads` objects of a registry, but an unfinished multipart
upload is no object, and R2 keeps and bills its parts until it is aborted).

`NfsStorage` (`owncr:storage:NfsStorage`) creates a managed NFS share in the VPC and exposes `host` and
`mount_path` for the nodes' mount (SwarmCluster's `NfsMount`).

Both are a `RegistryStorage`: each hands the cluster and the gateway what they need (`nfs_mount`,
`nfs_mount_point`, `s3`, `s3_keys`, `blob_redirect`) and exports its own stack outputs (`export()`), so the
composition never asks which one it has. `storage_for` builds the one the stack config chose.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_cloudflare as cloudflare
import pulumi_digitalocean as digitalocean

from components import physical_name
from components.swarm_cluster import NfsMount
from settings import R2, Nfs

# Token permission groups, by the names Cloudflare lists (scope com.cloudflare.edge.r2.bucket).
R2_OBJECT_GROUPS = ("Workers R2 Storage Bucket Item Read", "Workers R2 Storage Bucket Item Write")
# An upload left incomplete this long is abandoned: a push that takes longer fails in any case (the
# registries purge their upload state after 7 days, nginx times out idle transfers after 15 minutes).
ABORT_MULTIPART_DAYS = 3
NFS_PERFORMANCE_TIER = "standard"  # `high` can never be downgraded; registry blob I/O is sequential


def bucket_resource_key(account_id: str, jurisdiction: str, bucket: str) -> str:
    """The token-policy resource naming ONE bucket (Cloudflare's `<account>_<jurisdiction>_<bucket>` form)."""
    return f"com.cloudflare.edge.r2.bucket.{account_id}_{jurisdiction}_{bucket}"


def s3_secret_key(token_value: str) -> str:
    return hashlib.sha256(token_value.encode()).hexdigest()


def permission_group_ids(results: Sequence[Any], names: Sequence[str]) -> list[dict[str, str]]:
    """`[{"id": ...}]` for each name; results are output objects or, after Output.all, plain dicts."""
    by_name = {_field(r, "name"): _field(r, "id") for r in results}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"Cloudflare lists no token permission group named {missing}")
    # In id order: the provider puts permission groups in canonical order (by id) when it reads a
    # token back (terraform-provider-cloudflare v5, internal/services/api_token/custom.go); any other
    # order would be a diff on every preview.
    return sorted(({"id": by_name[n]} for n in names), key=lambda g: g["id"])


def token_resources(resource_key: str) -> str:
    """The policy's `resources` JSON exactly as the API returns it (compact): the provider stores the
    API's text verbatim and compares strings, so `json.dumps`' default ", "/": " would diff forever."""
    return json.dumps({resource_key: "*"}, separators=(",", ":"), sort_keys=True)


def _field(result: Any, key: str) -> str:
    return result[key] if isinstance(result, Mapping) else getattr(result, key)


class RegistryStorage(pulumi.ComponentResource):
    """What a storage hands the cluster and the gateway. The defaults are those of a storage without the
    thing: an object store gives the nodes nothing to mount, a share has no S3 API."""

    # The share every node mounts (SwarmCluster's `nfs`).
    nfs_mount: NfsMount | None = None
    # (bucket, endpoint) and (access key id, secret access key) of an S3 API, for the registries' config.
    s3: tuple[str, str] | None = None
    s3_keys: tuple[pulumi.Output[str], pulumi.Output[str]] | None = None
    # Registries answer blob GETs with a redirect to a presigned URL, which only an object store has.
    blob_redirect: bool = False

    @property
    def nfs_mount_point(self) -> str | None:
        """Where every node mounts the share, and the registries' storage is bind-mounted from."""
        return None if self.nfs_mount is None else self.nfs_mount.mount_point

    def export(self) -> None:
        """The storage's stack outputs (docs/configuration.md, "Outputs")."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class R2StorageArgs:
    stack: str
    account_id: str
    jurisdiction: str  # "default" | "eu" | "fedramp" (settings.py)
    location: str | None
    s3_endpoint: str  # settings.R2.s3_endpoint (depends on the jurisdiction)
    blob_redirect: bool = False  # settings.R2.blob_redirect

    def __post_init__(self) -> None:
        if not self.account_id or not self.s3_endpoint.startswith("https://"):
            raise ValueError(f"account_id and an https S3 endpoint are required, got {self!r}")


class R2Storage(RegistryStorage):
    bucket: cloudflare.R2Bucket
    lifecycle: cloudflare.R2BucketLifecycle
    token: cloudflare.ApiToken
    bucket_name: str
    s3_endpoint: str
    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]

    def __init__(self, name: str, args: R2StorageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("owncr:storage:R2Storage", name, None, opts)
        self.bucket_name = physical_name(args.stack, "registry")
        self.s3_endpoint = args.s3_endpoint
        self.bucket = cloudflare.R2Bucket(
            f"{name}-bucket",
            account_id=args.account_id,
            name=self.bucket_name,
            jurisdiction=args.jurisdiction,
            location=args.location,
            storage_class="Standard",
            opts=pulumi.ResourceOptions(
                parent=self,
                # Cloudflare honours `location` only at creation; a later change could not move the data.
                ignore_changes=["location"],
                # A bucket's jurisdiction cannot change, but the provider plans an in-place update (which
                # would try to create a bucket): plan it as the replacement it is, which `protect` below
                # then refuses with a clear message instead of a failed API call half-way through `up`.
                replace_on_changes=["jurisdiction"],
                # The images live here. A replacement (e.g. a changed `r2Jurisdiction`) would switch the
                # registries to a new, empty bucket; `pulumi destroy` must not take it either. Unprotect
                # deliberately: `pulumi state unprotect`.
                protect=True,
            ),
        )
        # The bucket's whole lifecycle configuration (it replaces the rule R2 puts on new buckets, which
        # aborts after 7 days): https://developers.cloudflare.com/r2/buckets/object-lifecycles/
        self.lifecycle = cloudflare.R2BucketLifecycle(
            f"{name}-lifecycle",
            account_id=args.account_id,
            bucket_name=self.bucket.name,
            jurisdiction=args.jurisdiction,
            rules=[
                cloudflare.R2BucketLifecycleRuleArgs(
                    id="owncr-abort-incomplete-uploads",
                    enabled=True,
                    conditions=cloudflare.R2BucketLifecycleRuleConditionsArgs(prefix=""),
                    abort_multipart_uploads_transition=cloudflare.R2BucketLifecycleRuleAbortMultipartUploadsTransitionArgs(
                        condition=cloudflare.R2BucketLifecycleRuleAbortMultipartUploadsTransitionConditionArgs(
                            type="Age", max_age=ABORT_MULTIPART_DAYS * 24 * 3600
                        )
                    ),
                )
            ],
            opts=pulumi.ResourceOptions(parent=self),
        )
        groups = cloudflare.get_api_token_permission_groups_list_output(
            opts=pulumi.InvokeOutputOptions(parent=self)
        ).results.apply(lambda results: permission_group_ids(results, R2_OBJECT_GROUPS))
        self.token = cloudflare.ApiToken(
            f"{name}-token",
            name=physical_name(args.stack, "registry-r2"),
            policies=[
                cloudflare.ApiTokenPolicyArgs(
                    effect="allow",
                    permission_groups=groups,
                    resources=token_resources(
                        bucket_resource_key(args.account_id, args.jurisdiction, self.bucket_name)
                    ),
                )
            ],
            # The token names the bucket: create it once the bucket exists.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.bucket]),
        )
        self.access_key_id = self.token.id
        # The provider marks `value` secret, the mocks do not: wrap it so it is secret either way.
        self.secret_access_key = pulumi.Output.secret(self.token.value.apply(s3_secret_key))
        self.s3 = (self.bucket_name, self.s3_endpoint)
        self.s3_keys = (self.access_key_id, self.secret_access_key)
        self.blob_redirect = args.blob_redirect
        self.register_outputs(
            {
                "bucket_name": self.bucket_name,
                "s3_endpoint": self.s3_endpoint,
                "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key,
            }
        )

    def export(self) -> None:
        pulumi.export("bucket_name", self.bucket_name)
        pulumi.export("s3_endpoint", self.s3_endpoint)


@dataclass(frozen=True, kw_only=True)
class NfsStorageArgs:
    stack: str
    region: str
    size_gib: int
    vpc_id: pulumi.Input[str]

    def __post_init__(self) -> None:
        if self.size_gib < 50:
            raise ValueError(f"size_gib {self.size_gib} is below DigitalOcean's 50 GiB minimum")


class NfsStorage(RegistryStorage):
    share: digitalocean.Nfs
    host: pulumi.Output[str]
    mount_path: pulumi.Output[str]

    def __init__(self, name: str, args: NfsStorageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("owncr:storage:NfsStorage", name, None, opts)
        self.share = digitalocean.Nfs(
            f"{name}-share",
            name=physical_name(args.stack, "registry"),
            region=args.region,
            size=args.size_gib,
            vpc_id=args.vpc_id,
            performance_tier=NFS_PERFORMANCE_TIER,
            # Deleting the share deletes every private image (`pulumi state unprotect` to destroy a stack).
            opts=pulumi.ResourceOptions(parent=self, protect=True),
        )
        self.host = self.share.host
        self.mount_path = self.share.mount_path
        self.nfs_mount = NfsMount(host=self.host, export_path=self.mount_path)
        self.register_outputs({"host": self.host, "mount_path": self.mount_path})

    def export(self) -> None:
        pulumi.export("nfs_host", self.host)
        pulumi.export("nfs_mount_path", self.mount_path)


def storage_for(
    name: str,
    storage: R2 | Nfs,
    *,
    stack: str,
    region: str,
    vpc_id: pulumi.Input[str],
    opts: pulumi.ResourceOptions | None = None,
) -> RegistryStorage:
    """The storage the stack config chose (settings.Cloud.storage); an NFS share lives in the VPC."""
    if isinstance(storage, R2):
        return R2Storage(
            name,
            R2StorageArgs(
                stack=stack,
                account_id=storage.account_id,
                jurisdiction=storage.jurisdiction,
                location=storage.location,
                s3_endpoint=storage.s3_endpoint,
                blob_redirect=storage.blob_redirect,
            ),
            opts=opts,
        )
    return NfsStorage(
        name,
        NfsStorageArgs(stack=stack, region=region, size_gib=storage.size_gib, vpc_id=vpc_id),
        opts=opts,
    )
