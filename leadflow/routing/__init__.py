"""Routing: the rules, reps and territories, the pure decision, the hop and owner notices."""
