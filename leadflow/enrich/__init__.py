"""Enrichment: derived fields, firmographics and account matching."""
