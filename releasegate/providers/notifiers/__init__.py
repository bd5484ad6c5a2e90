"""Notifiers: where rollout events go. Apprise covers Slack, Teams, Discord, PagerDuty, e-mail and webhooks."""

from releasegate.providers.notifiers.apprise import AppriseNotifier, check_url, redact

__all__ = ["AppriseNotifier", "check_url", "redact"]
