"""owncr's data plane: renders nginx (+ njs) and Distribution configs from one GatewaySettings, for the
Swarm (`render.bundle.render_production`) and for a local run (`render.bundle.render_local`,
`local.runner`), and keeps a registry's storage (`upkeep`). `names` holds its vocabulary, `config` its
settings; `bench` measures it. The folders and their import direction: docs/architecture.md.

No Pulumi import here: the components deploy exactly what these functions return.
"""
