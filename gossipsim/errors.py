"""The exceptions a user sees.

A ConfigError means "what you asked for cannot be done, and here is why": a bad configuration value,
a missing dataset, an impossible combination. Its message is a single line that names the bad value
and what is accepted. The CLI prints it and exits with status 2, never with a traceback.

Diverged means training produced NaN or Inf; the CLI prints its one line and exits with status 3. The
run directory keeps everything written before, and the last checkpoint taken while all was finite.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A user mistake, explained in one line."""


class Diverged(RuntimeError):
    """NaN or Inf in the agents' losses or parameters, first seen at `round` on `agents`."""

    def __init__(self, round: int, agents: list[int], what: str, checkpoint: str | None):
        self.round, self.agents, self.what, self.checkpoint = round, agents, what, checkpoint
        shown = ", ".join(map(str, agents[:8])) + (f" and {len(agents) - 8} more" if len(agents) > 8 else "")
        kept = f"last good checkpoint: {checkpoint}" if checkpoint else "no checkpoint had been written"
        super().__init__(f"training diverged at round {round}: {what} of agent{'s' * (len(agents) > 1)} "
                         f"{shown} not finite; {kept}")
