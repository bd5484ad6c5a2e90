"""Release governance: versions, release notes, approvals, change freezes, audit."""
