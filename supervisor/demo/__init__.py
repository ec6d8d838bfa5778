"""The bundled simulated agent that ``agentsup demo`` runs as blue and green.

``python -m supervisor.demo.agent`` plays seeded dice and crash rounds with a 1 % house edge and
watches two escrows, through the SDK (:mod:`supervisor.agent`) exactly as a real agent would. A
planted bug, chosen with ``AGENTSUP_DEMO_BUG``, makes one color misbehave on purpose so that
the supervisor has something to roll back: see :mod:`supervisor.demo.agent` for each of them.
"""
