"""perfops tasks.

I/O modules are named after the system they talk to (`postgres`, `prometheus`, `cache` for Redis,
`storage`, `slack`, `mail`, `outbox`, `traces`); each task does one query or one side effect.
Decision modules are named after the decision (`transient_errors`, `diagnosis`) and do no I/O.
"""
