"""Thin Prefect tasks, one module per stage; each calls into :mod:`aniso`."""
