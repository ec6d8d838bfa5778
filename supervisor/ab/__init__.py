"""A/B tests between two strategy variants of one version (issue 14, second half; docs/ab.md).

- :mod:`supervisor.ab.ab`: the test's life (start, the arms' data, saved and restored, stop);
- :mod:`supervisor.ab.arms`: each arm's running sums, and how they are saved;
- :mod:`supervisor.ab.stats`: the always-valid confidence sequence and the sample-ratio checks,
  measured by ``bench/ab_sim.py``;
- :mod:`supervisor.ab.report` and :mod:`supervisor.ab.html`: ``ab report`` and its page.

The mode itself (who acts, within what share) is :mod:`supervisor.rollout.ab`.
"""
