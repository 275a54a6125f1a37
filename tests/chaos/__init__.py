"""Fault suite: real broker, real Postgres, real worker processes; every signal checked.

`make chaos` (``python -m tests.chaos.run``) runs every scenario and prints the table;
docs/reliability.md explains what each scenario proves.
"""
