"""Nurture: cadence rules, the touch planner and unsubscribe links."""
