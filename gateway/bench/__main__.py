"""`python -m gateway.bench`: the pull and manifest benchmark (gateway/bench/pull.py)."""

from gateway.bench.pull import main

raise SystemExit(main())
