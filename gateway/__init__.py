"""owncr's data plane: renders nginx (+ njs router) and Distribution configs from one GatewaySettings,
for the Swarm (`render.render_production`) and for a local run (`render.render_local`, `runner`).

No Pulumi import here: the components deploy exactly what these functions return.
"""
