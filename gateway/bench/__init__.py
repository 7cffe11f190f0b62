"""Benchmarks that print figures measured side by side in one run: pulls and manifest requests through
the registry door vs Distribution alone (`python -m gateway.bench`), a fleet through the mirror door
(`python -m gateway.bench.fleet`), blob redirects to S3 storage (`python -m gateway.bench.redirect`);
`images` builds their test images (and the tests')."""
