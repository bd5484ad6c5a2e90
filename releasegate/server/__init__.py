"""``releasegate server``: one process that drives every active rollout and serves the REST API (docs/server.md)."""
