"""Pure planning code of the control plane, no Pulumi import: the Swarm service specs (`swarm_specs`, applied
by Pulumi in production and by the Engine API in tests), the load balancer's health check (`lb_health`),
the managers' cloud-init (`cloud_init`) and the stack output the maintenance tools read
(`maintenance_access`)."""
