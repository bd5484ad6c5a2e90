"""releasegate: turn a deployment runbook into a declarative spec that a controller executes safely."""

__version__ = "0.1.0"
