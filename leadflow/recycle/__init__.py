"""Recycling: stalled leads back to nurture."""
