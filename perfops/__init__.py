"""perfops: Prefect flows that keep a production platform fast.

The deployable code lives in the top-level packages the users asked for: `flows/` (one deployable
flow per file), `tasks/` (one module per outside system, plus pure decision modules), `blocks/`
(connection blocks). This package holds what ties them together: settings and connection
resolution, secret redaction, the CLI and the demo.
"""

__version__ = "0.1.0"
