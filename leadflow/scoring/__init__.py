"""Scoring: the rules, the pure scorer, the hop, learning and replays."""
