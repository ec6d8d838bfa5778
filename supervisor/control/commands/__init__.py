"""The control commands: one module each, holding both halves of its command (the CLI's
arguments, help and printing, and the daemon's ``Args`` and ``run``); each module's docstring
documents its message. :mod:`supervisor.control.commands.base` says what a module declares,
with a whole example.

``COMMANDS`` is the registry both sides read: the CLI builds one subcommand per entry, in this
order (the order of ``agentsup --help``), and the server looks the request's ``cmd`` up in it.
Adding a command is its module and one line here.

>>> list(COMMANDS)  # doctest: +NORMALIZE_WHITESPACE
['status', 'switch', 'confirm', 'rollback', 'restart', 'shutdown', 'triggers', 'handoff',
 'snapshot', 'decisions', 'canary', 'flags', 'gates', 'deploy', 'shadow', 'ab']
>>> import argparse
>>> COMMANDS["switch"].request(argparse.Namespace(color="green"))
{'color': 'green'}
>>> COMMANDS["rollback"].Args.model_validate({"reason": "PnL looks off"}).reason
'PnL looks off'
"""

from __future__ import annotations

from typing import Any

from supervisor.control.commands import (
    ab,
    canary,
    confirm,
    decisions,
    deploy,
    flags,
    gates,
    handoff,
    restart,
    rollback,
    shadow,
    shutdown,
    snapshot,
    status,
    switch,
    triggers,
)
from supervisor.control.commands.base import Command

COMMANDS: dict[str, Command[Any]] = {
    command.name: command
    for command in (
        status.COMMAND,
        switch.COMMAND,
        confirm.COMMAND,
        rollback.COMMAND,
        restart.COMMAND,
        shutdown.COMMAND,
        triggers.COMMAND,
        handoff.COMMAND,
        snapshot.COMMAND,
        decisions.COMMAND,
        canary.COMMAND,
        flags.COMMAND,
        gates.COMMAND,
        deploy.COMMAND,
        shadow.COMMAND,
        ab.COMMAND,
    )
}
