"""Rendering: every file the data plane runs with (nginx.conf and its includes from `templates/`, the njs
modules in `njs/`, each registry's config.yml, htpasswd), as pure functions of one GatewaySettings.
`bundle.render_production` is what the Swarm services get, `bundle.render_local` what the local runner
starts."""
