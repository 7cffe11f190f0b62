"""Upkeep of a registry's storage: retention rules and their plan, garbage collection in a read-only
window (`maintenance`), the registry API client and store readers it uses, and the metrics table
(`status`). The same code runs locally (`python -m gateway maintenance|status`) and against a deployed
stack (components/cli)."""
