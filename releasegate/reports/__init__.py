"""Deployment reports and post-mortem drafts (docs/reports.md): ``model`` the data, ``build`` it from the records,
``render`` it as Markdown, HTML or JSON; ``traffic`` records the per-version counts they need at analysis time.

Kept import-free: the controller imports ``releasegate.reports.traffic`` on every rollout.
"""
