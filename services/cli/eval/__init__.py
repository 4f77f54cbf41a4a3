"""`claas eval`: measure what feedback taught, through the proxy's public HTTP API only.

Per preference, rounds of chat rollouts -> feedback -> measurement, beside an unrelated-feedback control
(DESIGN.md §5.1); a claim of learning is real minus control.
"""
