"""The Docker API's private PKI, made with pulumi-tls: one CA, a server certificate per manager, one
client certificate for the deployer (and the docker provider of the registry services).

Each server certificate names the manager's reserved IP (created before the droplet, so it is known
here), 127.0.0.1 and the hostname: the deployer verifies exactly the address it dials against our CA,
with no trust on first use. Keys are ECDSA P-256 (small user data, fast handshakes). Certificates last
ten years and are not renewed early: droplets ignore user-data changes (see swarm_cluster.py), so a
re-issued server certificate would only reach a node when it is replaced; rotating means replacing the
nodes one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

KEY_ALGORITHM = "ECDSA"
ECDSA_CURVE = "P256"
VALIDITY_HOURS = 10 * 365 * 24
ORGANIZATION = "owncr"


@dataclass(frozen=True)
class IssuedCert:
    key: tls.PrivateKey
    cert_pem: pulumi.Output[str]

    @property
    def key_pem(self) -> pulumi.Output[str]:
        return pulumi.Output.secret(self.key.private_key_pem)


def private_key(name: str, parent: pulumi.Resource) -> tls.PrivateKey:
    return tls.PrivateKey(
        name, algorithm=KEY_ALGORITHM, ecdsa_curve=ECDSA_CURVE, opts=pulumi.ResourceOptions(parent=parent)
    )


def certificate_authority(name: str, common_name: str, parent: pulumi.Resource) -> IssuedCert:
    key = private_key(f"{name}-key", parent)
    cert = tls.SelfSignedCert(
        name,
        private_key_pem=key.private_key_pem,
        is_ca_certificate=True,
        subject=tls.SelfSignedCertSubjectArgs(common_name=common_name, organization=ORGANIZATION),
        allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
        validity_period_hours=VALIDITY_HOURS,
        opts=pulumi.ResourceOptions(parent=parent),
    )
    return IssuedCert(key, cert.cert_pem)


def issue(
    name: str,
    *,
    ca: IssuedCert,
    common_name: pulumi.Input[str],
    usage: str,
    parent: pulumi.Resource,
    ip_addresses: Sequence[pulumi.Input[str]] = (),
    dns_names: Sequence[pulumi.Input[str]] = (),
) -> IssuedCert:
    """A leaf certificate signed by `ca`; `usage` is "server_auth" or "client_auth"."""
    key = private_key(f"{name}-key", parent)
    request = tls.CertRequest(
        f"{name}-csr",
        private_key_pem=key.private_key_pem,
        subject=tls.CertRequestSubjectArgs(common_name=common_name, organization=ORGANIZATION),
        ip_addresses=list(ip_addresses),
        dns_names=list(dns_names),
        opts=pulumi.ResourceOptions(parent=parent),
    )
    cert = tls.LocallySignedCert(
        name,
        cert_request_pem=request.cert_request_pem,
        ca_cert_pem=ca.cert_pem,
        ca_private_key_pem=ca.key.private_key_pem,
        allowed_uses=["digital_signature", "key_encipherment", usage],
        validity_period_hours=VALIDITY_HOURS,
        opts=pulumi.ResourceOptions(parent=parent),
    )
    return IssuedCert(key, cert.cert_pem)
