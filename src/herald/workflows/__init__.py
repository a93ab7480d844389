"""Workflow runs on the scheduler's side: herald.workflows.runner fires due timers."""
