"""perfops' core: what every layer may import (errors, settings, redaction, progress, priority).

It imports nothing of the project's other packages. The layers above it, bottom to top:
`blocks/` and `decisions/`, `tasks/`, `flows/`, `demo/`, `cli/` (see docs/architecture.md).
"""

__version__ = "0.1.0"
