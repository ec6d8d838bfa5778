"""Deploy gates: when a new version may go in (the seed's One Rule; docs/gates.md)."""
