"""htpasswd for the registry door: bcrypt hashes with a salt derived from (name, password).

A deterministic salt makes an unchanged password render an identical file, so `pulumi up` shows no
diff and does not roll the gateway. The salt is still unique per user and unpredictable without the
password, which is all bcrypt's salt is for (defeating precomputed tables).
"""

from __future__ import annotations

import hashlib

import bcrypt

from gateway.config import User

# Cost 10 is nginx-friendly (~50 ms per check); the gateway verifies a login once and then caches it.
BCRYPT_COST = 10
_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _bcrypt_base64(data: bytes) -> str:
    """OpenBSD bcrypt's base64 (its own alphabet, no padding), as bcrypt salts are written."""
    bits = int.from_bytes(data, "big") << 4  # 128 bits -> 132 = 22 six-bit digits
    return "".join(_BCRYPT_ALPHABET[(bits >> (6 * i)) & 63] for i in reversed(range(22)))


def salt_for(name: str, password: str) -> bytes:
    digest = hashlib.sha256(b"owncr-htpasswd\0" + name.encode() + b"\0" + password.encode()).digest()
    return f"$2b${BCRYPT_COST:02d}${_bcrypt_base64(digest[:16])}".encode()


def hash_password(name: str, password: str) -> str:
    return bcrypt.hashpw(password.encode(), salt_for(name, password)).decode()


def render_htpasswd(users: tuple[User, ...]) -> str:
    return "".join(f"{u.name}:{hash_password(u.name, u.password)}\n" for u in users)
