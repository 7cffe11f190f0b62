"""htpasswd for the registry door: bcrypt hashes whose salt is keyed by a deployment secret.

The salt is an HMAC of (name, password) under `key`, a random secret of the deployment that never
leaves Pulumi's encrypted state (RegistryServices generates it; a local run makes a fresh one): an
unchanged password still renders an identical file, so `pulumi up` shows no diff and does not roll the
gateway, but a bcrypt hash shows its salt, and without the key nobody who reads the file can test a
password guess against the salt with one cheap hash: every guess costs a full bcrypt. The same password
gives different lines in different deployments.
"""

from __future__ import annotations

import hashlib
import hmac

import bcrypt

from gateway.config import User

# Cost 10 is nginx-friendly (~50 ms per check); the gateway verifies a login once and then caches it.
BCRYPT_COST = 10
_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def bcrypt_base64(data: bytes) -> str:
    """OpenBSD bcrypt's base64 (its own alphabet, no padding), as bcrypt salts are written."""
    bits = int.from_bytes(data, "big") << 4  # 128 bits -> 132 = 22 six-bit digits
    return "".join(_BCRYPT_ALPHABET[(bits >> (6 * i)) & 63] for i in reversed(range(22)))


def salt_for(name: str, password: str, key: str) -> bytes:
    if len(key) < 16:
        raise ValueError("the htpasswd salt key must be a secret of at least 16 characters")
    message = b"owncr-htpasswd\0" + name.encode() + b"\0" + password.encode()
    digest = hmac.new(key.encode(), message, hashlib.sha256).digest()
    return f"$2b${BCRYPT_COST:02d}${bcrypt_base64(digest[:16])}".encode()


def hash_password(name: str, password: str, key: str) -> str:
    return bcrypt.hashpw(password.encode(), salt_for(name, password, key)).decode()


def render_htpasswd(users: tuple[User, ...], key: str) -> str:
    return "".join(f"{u.name}:{hash_password(u.name, u.password, key)}\n" for u in users)
