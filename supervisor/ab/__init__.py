"""A/B tests between two strategy variants (issue 14, second half).

Only the statistics are here so far (:mod:`supervisor.ab.stats`: the always-valid confidence
sequence and the sample-ratio-mismatch checks, measured by ``bench/ab_sim.py``); the rollout
mode, the commands and the report are still to come.
"""
