"""Narrow interfaces to the outside world; one module per provider, chosen by the spec's ``kind``."""
