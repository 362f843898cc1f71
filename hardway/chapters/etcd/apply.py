"""How etcd members come up: all stopped members at once, then wait for health, never one by one.

etcd runs ``Type=notify``: ``systemctl start`` returns only once the member has joined a quorum,
so a member started alone blocks until the others come. The push therefore starts members with
``--no-block`` (see Chapter.no_block_start) and this waits on each member's own health endpoint.
Restarts of running members are rolling (the base Chapter's settle): each healthy before the next.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from hardway import remote
from hardway.chapters.base import Context
from hardway.chapters.etcd.cluster import health, status
from hardway.chapters.etcd.files import UNIT
from hardway.errors import HardwayError
from hardway.facts import gather, unit_states
from hardway.inventory import Node
from hardway.remote import Remote

POLL_S = 0.2
FAILED = "the unit failed"


def wait_healthy(ctx: Context, nodes: Sequence[Node]) -> None:
    """Poll each member's own endpoint until healthy; one line per member as it gets there."""

    def wait(r: Remote) -> float:
        t0 = time.monotonic()
        asked, state = health(ctx.inv, r.node), unit_states((UNIT,))
        last = ""
        while time.monotonic() - t0 < ctx.timeout:
            facts = gather(r, [asked, state], timeout=20)
            ok, text = facts[asked]
            if ok:
                ctx.progress(r.node, f"etcd healthy after {time.monotonic() - t0:.1f}s")
                return time.monotonic() - t0
            last = (text.splitlines() or [""])[-1]
            if facts[state][UNIT].active == "failed":
                raise HardwayError(f"{r.node.name}: etcd failed to start ({FAILED}); see `journalctl -u etcd` "
                                   "there, or run `invoke verify --chapter etcd` for the cause")
            time.sleep(POLL_S)
        raise HardwayError(f"{r.node.name}: etcd not healthy after {time.monotonic() - t0:.0f}s "
                           f"({last}); run `invoke verify --chapter etcd` for the cause")

    outcomes = remote.fan_out(ctx.inv, nodes, wait, connector=ctx.connector)
    # a member whose unit failed explains why the others found no quorum: name it first
    outcomes.sort(key=lambda o: FAILED not in (o.error or ""))
    if (error := remote.first_error(outcomes)):
        raise HardwayError(error)


def wait_one_leader(ctx: Context, nodes: Sequence[Node]) -> None:
    """Until every member that answers names the same leader: after a (re)start, a member that has
    not heard of the new leader yet would otherwise fail the checks that follow."""
    t0 = time.monotonic()
    seen: set[object] = set()

    def leader(r: Remote) -> object:
        fact = status(ctx.inv, r.node)
        answer = gather(r, [fact])[fact]
        return answer[0].get("Status", {}).get("leader") if isinstance(answer, list) and answer else None

    while time.monotonic() - t0 < ctx.timeout:
        outcomes = remote.fan_out(ctx.inv, nodes, leader, connector=ctx.connector)
        seen = {o.value for o in outcomes if o.value is not None}
        if len(seen) == 1 and 0 not in seen and None not in seen:
            return
        time.sleep(POLL_S)
    raise HardwayError(f"etcd members do not agree on one leader after {ctx.timeout:.0f}s (they name {len(seen)}); "
                       "run `invoke verify --chapter etcd` for the cause")
