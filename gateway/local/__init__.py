"""Running the data plane on this machine: the rendered bundle as processes (`runner`), the binaries it
starts (`binaries`: the production versions from .tools, else the system's), free ports, /proc readers,
and a plain Distribution (`plain_registry`) that tests and benchmarks use as an upstream or a baseline."""
