"""What a load run is asked to do (:class:`LoadSpec`) and what it measured
(:class:`LoadResult`), with the mix parser and the percentile rule they share."""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any, Literal

from ._discovery import Target
from ._workload import ETCD_OPS, OPS, Protocol

__all__ = [
    "DEFAULT_ENDPOINTS",
    "ClientKind",
    "Consistency",
    "LoadResult",
    "LoadSpec",
    "parse_mix",
    "percentiles",
]

DEFAULT_ENDPOINTS: tuple[str, ...] = (
    "http://127.0.0.1:3001",
    "http://127.0.0.1:3002",
    "http://127.0.0.1:3003",
)

Consistency = Literal["linearizable", "stale"]
ClientKind = Literal["raw", "httpx"]


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """``"write=0.5,read=0.5,cas=0.1"`` -> weights; a bare name means weight 1."""
    mix: list[tuple[str, float]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight_text = part.partition("=")
        name = name.strip()
        if name not in OPS:
            raise ValueError(f"unknown operation {name!r} in mix (known: {', '.join(OPS)})")
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise ValueError(f"bad weight {weight_text!r} for {name!r}") from None
        if not (weight >= 0 and math.isfinite(weight)):
            raise ValueError(f"weight for {name!r} must be a finite number >= 0")
        mix.append((name, weight))
    if not mix or sum(w for _, w in mix) <= 0:
        raise ValueError(f"mix {text!r} has no operation with a positive weight")
    return tuple(mix)


def percentiles(lat: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles of sorted latencies (ms); empty when there are none."""
    if not lat:
        return {}
    n = len(lat)

    def rank(q: float) -> float:
        return lat[min(n - 1, max(0, math.ceil(q * n) - 1))]

    return {
        "min": lat[0],
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "p99.9": rank(0.999),
        "max": lat[-1],
        "mean": sum(lat) / n,
    }



@dataclass(frozen=True, slots=True)
class LoadSpec:
    endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    concurrency: int = 16
    duration: float = 10.0  # seconds of recording, after warm-up; always applies
    requests: int | None = None  # recorded-request cap; None = only the duration
    keys: int = 1000  # key space size
    key_size: int = 16
    value_size: int = 100
    mix: tuple[tuple[str, float], ...] = (("write", 1.0),)
    consistency: Consistency = "linearizable"
    target: Target = "all"
    warmup: float = 0.0
    path: str = "/echo"  # for the raw "echo" and "get" operations
    client: ClientKind = "raw"
    timeout: float = 10.0  # per request
    prefill: bool = False  # write every key once before warm-up
    seed: int = 0
    protocol: Protocol = "trioraft"  # or "etcd": its v3 JSON gateway

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not (self.duration > 0 and math.isfinite(self.duration)):
            raise ValueError("duration must be a positive number of seconds")
        if self.requests is not None and self.requests < 1:
            raise ValueError("requests must be >= 1")
        if self.keys < 1 or self.key_size < 1 or self.value_size < 0:
            raise ValueError("keys and key size must be >= 1, value size >= 0")
        if self.warmup < 0 or self.timeout <= 0:
            raise ValueError("warmup must be >= 0 and timeout > 0")
        if not self.endpoints:
            raise ValueError("at least one endpoint is needed")
        parse_mix(",".join(f"{n}={w}" for n, w in self.mix))  # validates
        unknown = {n for n, w in self.mix if w > 0} - ETCD_OPS
        if self.protocol == "etcd" and unknown:
            raise ValueError(
                f"the etcd protocol has no {', '.join(sorted(unknown))} operation "
                f"(it has: {', '.join(sorted(ETCD_OPS))})"
            )


@dataclass(slots=True)
class LoadResult:
    spec: LoadSpec
    elapsed: float  # seconds of the recorded phase
    outcomes: dict[str, int]  # label -> count, over every recorded request
    by_op: dict[str, dict[str, int]]  # op -> label -> count
    ok: int  # successful recorded requests
    latencies_ms: list[float]  # of the successes, sorted ascending
    targets: tuple[str, ...]  # the URLs the workers actually hit
    leader: str | None = None
    notes: list[str] = field(default_factory=list)
    #: op -> latencies (ms) of its successes, sorted ascending
    op_latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    #: Every recorded request in completion order: seconds since the window opened,
    #: op index into ``ops``, 1 if it succeeded, its latency in ms.
    ops: tuple[str, ...] = ()
    done_at: array[float] = field(default_factory=lambda: array("d"))
    op_index: array[int] = field(default_factory=lambda: array("B"))
    good: array[int] = field(default_factory=lambda: array("B"))
    latency_ms: array[float] = field(default_factory=lambda: array("d"))

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def errors(self) -> int:
        return self.total - self.ok

    @property
    def ops_per_s(self) -> float:
        """Successful operations per second."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.total / self.elapsed if self.elapsed > 0 else 0.0

    def percentiles(self) -> dict[str, float]:
        """Nearest-rank percentiles in ms over every success; empty when none."""
        return percentiles(self.latencies_ms)

    def timeline(self, interval: float = 0.5) -> dict[str, Any]:
        """Per ``interval`` seconds of the window: successes per op, errors, and the
        worst success latency per op (0 where an interval had none)."""
        # (a last bucket holding only the window's final milliseconds is folded in)
        n = max(1, math.ceil(self.elapsed / interval - 0.01)) if self.elapsed > 0 else 1
        ok = {op: [0] * n for op in self.ops}
        worst = {op: [0.0] * n for op in self.ops}
        errors = [0] * n
        for t, i, g, lat in zip(
            self.done_at, self.op_index, self.good, self.latency_ms, strict=True
        ):
            b = min(n - 1, int(t / interval))
            op = self.ops[i]
            if g:
                ok[op][b] += 1
                if lat > worst[op][b]:
                    worst[op][b] = lat
            else:
                errors[b] += 1
        return {"interval_s": interval, "ok": ok, "errors": errors, "worst_ms": worst}

    def to_json(self) -> dict[str, Any]:
        s = self.spec
        return {
            "spec": {
                "endpoints": list(s.endpoints),
                "targets": list(self.targets),
                "protocol": s.protocol,
                "concurrency": s.concurrency,
                "duration": s.duration,
                "requests": s.requests,
                "keys": s.keys,
                "key_size": s.key_size,
                "value_size": s.value_size,
                "mix": dict(s.mix),
                "consistency": s.consistency,
                "target": s.target,
                "warmup": s.warmup,
                "client": s.client,
            },
            "leader": self.leader,
            "elapsed_s": self.elapsed,
            "total": self.total,
            "ok": self.ok,
            "errors": self.errors,
            "ops_per_s": self.ops_per_s,
            "requests_per_s": self.requests_per_s,
            "outcomes": dict(sorted(self.outcomes.items())),
            "by_op": {op: dict(sorted(c.items())) for op, c in sorted(self.by_op.items())},
            "latency_ms": self.percentiles(),
            "latency_ms_by_op": {
                op: percentiles(lat) for op, lat in sorted(self.op_latencies_ms.items())
            },
            "timeline": self.timeline(),
            "notes": list(self.notes),
        }
