"""LocalSwarm: makes the user's own Docker engine a single-node swarm (the `local` stack), idempotently.

A `pulumi_command.local.Command` runs `docker swarm init` only if the engine is not in a swarm yet
(`docker info` reports `Swarm.LocalNodeState`), then prints the subnet(s) of `docker_gwbridge`: ports a
swarm task publishes reach it through that bridge, so local clients show up with addresses from it and
the mirror door must admit them (`bridge_cidrs`).

Destroying the stack does not leave the swarm: the engine may run other swarm services, and leaving
would remove them too (`docker swarm leave --force` if you want it gone).
"""

from __future__ import annotations

import pulumi
from pulumi_command import local

from components.gateway_wiring import bridge_cidrs

TYPE = "owncr:registry:LocalSwarm"
# - docker_gwbridge appears lazily (first task on an overlay network); create it up front with Docker's
#   own options so its subnet can be read now
#   (https://docs.docker.com/engine/swarm/networking/#customize-the-docker_gwbridge).
# - `--advertise-addr/--listen-addr 127.0.0.1`: a one-node swarm needs no reachable address (and an
#   engine with several interfaces refuses `swarm init` without one); the swarm's control port stays on
#   loopback.
#   SWARM_LISTEN_ADDR / SWARM_DATA_PATH_PORT override the ports (the tests run next to other swarms).
INIT_SCRIPT = """set -eu
if ! docker version >/dev/null 2>&1; then
  echo "owncr local: no Docker engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}:" \\
    "start Docker, or let this user use its socket" >&2
  exit 1
fi
PORT_IN_USE='import socket,sys; sys.exit(socket.socket().connect_ex(("127.0.0.1", int(sys.argv[1]))) != 0)'
published=$(docker service ls -q 2>/dev/null | xargs -r docker service inspect \\
  --format '{{range .Endpoint.Spec.Ports}}{{.PublishedPort}} {{end}}')
for port in ${OWNCR_PORTS:-}; do
  case " $published " in *" $port "*) continue ;; esac  # a swarm service (this stack's gateway) has it
  if python3 -c "$PORT_IN_USE" "$port"; then
    echo "owncr local: port $port is taken by another program: stop it, or choose another" \\
      "localRegistryPort / localMirrorPort" >&2
    exit 1
  fi
done
if ! docker network inspect docker_gwbridge >/dev/null 2>&1; then
  docker network create --driver bridge \\
    --opt com.docker.network.bridge.name=docker_gwbridge \\
    --opt com.docker.network.bridge.enable_icc=false \\
    --opt com.docker.network.bridge.enable_ip_masquerade=true docker_gwbridge >&2
fi
if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
  docker swarm init --advertise-addr 127.0.0.1 --listen-addr "${SWARM_LISTEN_ADDR:-127.0.0.1:2377}" \\
    ${SWARM_DATA_PATH_PORT:+--data-path-port "$SWARM_DATA_PATH_PORT"} >&2
fi
docker network inspect docker_gwbridge --format '{{range .IPAM.Config}}{{.Subnet}} {{end}}'
"""


class LocalSwarm(pulumi.ComponentResource):
    init: local.Command
    bridge_cidrs: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        docker_host: str,
        *,
        ports: tuple[int, ...] = (),
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """`ports`: the host ports the doors will publish; the init refuses to start if another program
        holds one (Swarm would only fail later, task by task)."""
        super().__init__(TYPE, name, None, opts)
        self.init = local.Command(
            f"{name}-init",
            create=INIT_SCRIPT,
            # Re-run on `pulumi up` after the script changes; the script itself is idempotent.
            triggers=[INIT_SCRIPT],
            environment={"DOCKER_HOST": docker_host, "OWNCR_PORTS": " ".join(str(p) for p in ports)},
            logging=local.Logging.STDERR,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.bridge_cidrs = self.init.stdout.apply(bridge_cidrs)
        self.register_outputs({"bridge_cidrs": self.bridge_cidrs})
