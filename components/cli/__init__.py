"""Command-line tools run against a deployed stack (by CI's maintenance workflow and by operators):
`python -m components.cli.maintenance` (retention and garbage collection) and
`python -m components.cli.status` (what the mirror does, summed over the nodes)."""
