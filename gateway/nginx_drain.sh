# owncr gateway entrypoint (rendered by gateway/render.py, run by `sh`): drain before nginx stops.
# Usage: sh nginx_drain.sh <drain-flag-file> nginx [args...]; OWNCR_DRAIN_SECONDS from the service spec.
#
# Swarm stops a task with the image's STOPSIGNAL (SIGQUIT in the official nginx image) or SIGTERM. A
# plain nginx would close its listening socket at once while the load balancer keeps sending the node
# new connections until its health check marked it down (components/lb_health.py). So on either
# signal: create the flag (/healthz answers 503 from then on, nginx keeps serving), wait until the load
# balancer has taken the node out, then SIGQUIT nginx, which finishes in-flight transfers and exits.
# The service's stop grace period covers the drain plus the transfers. (sh starts "$@" with SIGQUIT
# ignored, as for any background command; nginx installs its own handler, which replaces that.)
flag="$1"
shift
rm -f "$flag"
drain() {
    : >"$flag"
    sleep "${OWNCR_DRAIN_SECONDS:-0}"
    kill -QUIT "$pid"
}
trap drain TERM QUIT INT
"$@" &
pid=$!
# `wait` returns early when a trapped signal arrives (the trap has run by then): wait again until nginx
# itself has exited, and exit with its status.
status=0
while :; do
    wait "$pid" && status=0 || status=$?
    kill -0 "$pid" 2>/dev/null || break
done
exit "$status"
