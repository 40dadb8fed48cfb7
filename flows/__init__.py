"""Prefect flows: one per stage plus ``produce``, the whole job."""
