"""KPIs: funnel measures and leakage."""
