"""The proxy's web dashboard (DESIGN.md §10): adapters and lineage, the feedback log, live jobs, eval runs."""
