# shellcheck shell=sh
# owncr graceful-stop entrypoint (rendered by gateway/render.py, run by `sh`): keep serving while the
# callers move away, then stop. Usage: sh drain.sh <flag-file|-> <SIGNAL> command [args...], with
# OWNCR_DRAIN_SECONDS from the service spec.
#
# Swarm stops a task with the image's STOPSIGNAL (SIGQUIT in the official nginx image) or SIGTERM, and
# the program would stop accepting connections at once while its callers still send it new ones:
# - nginx (flag file, QUIT): the load balancer keeps sending the node connections until its health
#   check marked it down (components/lb_health.py). The flag turns /healthz into 503 while nginx still
#   serves; after the drain nginx gets SIGQUIT, finishes in-flight transfers and exits.
# - a registry (no flag, TERM): Swarm has taken the task out of its DNS answers, but nginx re-resolves
#   every few seconds; until then it keeps sending requests to this address, and a container that is
#   gone answers nothing (a connect timeout), so it keeps serving, then gets SIGTERM (Distribution then
#   drains for http.draintimeout).
# The service's stop grace period covers the drain plus that shutdown. (sh starts the command with
# SIGQUIT and SIGINT ignored, as any background command; nginx and Distribution install their own
# handlers, which replace that.)
flag="$1"
stop="$2"
shift 2
[ "$flag" = - ] || rm -f "$flag"
# shellcheck disable=SC2317  # run by the trap below, which shellcheck does not follow
drain() {
    [ "$flag" = - ] || : >"$flag"
    sleep "${OWNCR_DRAIN_SECONDS:-0}"
    kill "-$stop" "$pid"
}
trap drain TERM QUIT INT
"$@" &
pid=$!
# `wait` returns early when a trapped signal arrives (the trap has run by then): wait again until the
# command itself has exited, and exit with its status.
status=0
while :; do
    wait "$pid" && status=0 || status=$?
    kill -0 "$pid" 2>/dev/null || break
done
exit "$status"
