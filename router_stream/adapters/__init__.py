"""Adapters: the only modules that talk to Kafka (admin, topics) and Postgres.

Each translates its client library's errors into router_stream.errors at the seam.
"""
