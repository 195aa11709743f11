"""The order of a bench's runs, interleaved so that the machine's drift and noise hit every policy alike.

One run is one (round, rate, policy): the whole request window at that rate with that policy. Within a round,
every policy runs at a rate before the next rate; the policy order rotates by one from round to round, so no
policy always runs first at a rate (right after the load changed) or always last. With `alternate_rates` the
rate order reverses every other round, so a slow drift of the machine does not always meet the highest rates last.
"""

from __future__ import annotations


def run_order(policies: list[str], rates: list[float], rounds: int,
              alternate_rates: bool = False) -> list[tuple[int, float, str]]:
    """(round, rate, policy) for every run, in the order they run."""
    order = []
    for r in range(rounds):
        shift = r % len(policies)
        rotated = policies[shift:] + policies[:shift]
        round_rates = rates[::-1] if alternate_rates and r % 2 else rates
        order += [(r, rate, policy) for rate in round_rates for policy in rotated]
    return order
