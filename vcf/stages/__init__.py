"""Stages: each declares its units of work and how their results are assembled."""
