"""Benchmarks of the ATP service against the ceilings of the machine they run on."""
