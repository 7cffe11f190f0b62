"""The data plane's vocabulary: every name that two layers (Python, nginx templates, njs, the Swarm specs,
the tests) must agree on is decided here, once. The renderers hand these to nginx and njs (the njs
modules read them from the generated `names.json`), so no layer spells one again.
"""

from __future__ import annotations

# The manifest media types a registry client asks for, most capable first (what `Accept` lists).
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[0], MANIFEST_TYPES[2]
