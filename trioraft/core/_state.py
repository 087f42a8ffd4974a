"""What every part of RaftCore may use of the others (for the type checker only).

RaftCore is assembled from mixins, one concern each: elections (`_election`),
the follower side of replication (`_follower`), the leader side
(`_leader`), ReadIndex (`_reads`), and the core itself (`_raft`: state,
inputs, message dispatch, Ready). `CoreState` declares the state and the
methods they share; at run time it is empty, so it never shadows anything.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trioraft.core._config import CoreConfig, Role
    from trioraft.core._log import RaftLog
    from trioraft.core._membership import ConfigHistory
    from trioraft.core._progress import Progress
    from trioraft.core._reads import _Forwarded, _ReadRound
    from trioraft.core._types import Configuration, HardState, Message, SnapshotMeta

__all__ = ["CoreState"]


class CoreState:
    if TYPE_CHECKING:
        config: CoreConfig
        id: str
        _rng: random.Random
        term: int
        vote: str | None
        log: RaftLog
        _configs: ConfigHistory
        voters: frozenset[str]
        role: Role
        leader_id: str | None
        progress: dict[str, Progress]
        _now: float
        _votes: dict[str, bool]
        _msgs: list[Message]
        _read_states: list[tuple[int, int]]
        _pending_snapshot: tuple[SnapshotMeta, bool] | None
        _persisted_hs: HardState
        _heartbeat_due: float
        _check_quorum_due: float
        _broadcast: bool
        _read_seq: int
        _reads_waiting_commit: list[tuple[str | None, int, float]]
        _reads_new: list[tuple[str | None, int, float]]
        _read_rounds: list[_ReadRound]
        _transfer_target: str | None
        _transfer_deadline: float
        _forwarded: dict[int, _Forwarded]
        _forwarded_new: list[int]
        _leader_contact: float
        _retired: bool
        _election_deadline: float

        @property
        def configuration(self) -> Configuration: ...
        def quorum(self) -> int: ...
        def _send(self, msg: Message) -> None: ...
        def _reset_election_timer(self) -> None: ...
        def _become_follower(self, term: int, leader: str | None) -> None: ...
        def _become_leader(self) -> None: ...
        def _config_changed(self) -> None: ...
        # _election
        def _campaign(self, pre_vote: bool, transfer: bool = False) -> None: ...
        # _reads
        def _fail_reads(self) -> None: ...
        def _release_reads(self) -> None: ...
        def _committed_in_term(self) -> bool: ...
        def _reads_after_commit(self) -> None: ...
        # _leader
        def _maybe_commit(self) -> None: ...
        def _send_appends(self) -> None: ...
        def _send_heartbeat(
            self, peer: str, pr: Progress, read_seq: int, commit_only: bool = False
        ) -> None: ...
        def caught_up(self, member_id: str) -> bool: ...
        def promotable(self, member_id: str) -> bool: ...
