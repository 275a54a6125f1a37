"""The pure routing core: no I/O, time and randomness injected (see docs/architecture.md)."""
