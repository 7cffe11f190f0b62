"""Apply `components.plan.swarm_specs` to a real swarm through the Engine API, the way pulumi-docker would.

`create_objects` creates one Swarm config or secret per rendered file under the component's physical
name; `engine_service_spec` is what the provider sends for a service: the component's `service_args`
through the provider's expand functions (provider_expand.py).
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from typing import Any

from components.plan import swarm_specs
from components.plan.swarm_specs import ServiceSpec
from components.service_args import service_args
from gateway.render.bundle import Bundle
from tests.services import provider_expand
from tests.services.swarm_engine import Engine


def create_objects(engine: Engine, stack: str, bundle: Bundle) -> dict[str, tuple[str, str]]:
    """role -> (id, name) of each rendered file as a Swarm config or secret; an object whose name
    (content hash) exists already is reused, as an unchanged Pulumi resource would be."""
    objects = {}
    for f in swarm_specs.swarm_files(bundle):
        content = next(r.content for r in bundle.services[f.service].files if r.path == f.path)
        name = swarm_specs.object_name(stack, f, content)
        kind = "secrets" if f.secret else "configs"
        body = {
            "Name": name,
            "Data": base64.b64encode(content.encode()).decode(),
            "Labels": swarm_specs.object_labels(stack, f),
        }
        existing = engine.get(f"/{kind}?filters=" + urllib.parse.quote(json.dumps({"name": [name]})))
        exact = [o["ID"] for o in existing if o["Spec"]["Name"] == name]
        objects[f.role] = (exact[0] if exact else engine.post(f"/{kind}/create", body)["ID"], name)
    return objects


def engine_service_spec(
    spec: ServiceSpec,
    objects: dict[str, tuple[str, str]],
    network_id: str,
    *,
    image: str,
) -> dict[str, Any]:
    """The Engine API body pulumi-docker would send for `spec`: the component's own arguments
    (`service_args`, what RegistryServices hands the provider) through the provider's expand functions
    (provider_expand.py). Only the image (a local stand-in) differs."""
    body = provider_expand.service_spec(service_args(spec, objects, network_id))
    body["TaskTemplate"]["ContainerSpec"]["Image"] = image
    return body
