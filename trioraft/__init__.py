"""trioraft: a replicated key-value store on the Raft consensus algorithm, on Trio."""

__version__ = "0.1.0"
