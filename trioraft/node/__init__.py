"""The Trio runtime around the sans-IO core: one driver task, storage, peers, replies.

`RaftNode` is the public face; `open_node()` runs one for the duration of an
`async with` block. Each role of the runtime lives in its own private module
(see `trioraft.node._node` for the map).
"""

from trioraft.node._looplag import LoopLagMonitor
from trioraft.node._node import RaftNode, open_node
from trioraft.node._roster import NodeIdentity

__all__ = ["LoopLagMonitor", "NodeIdentity", "RaftNode", "open_node"]
