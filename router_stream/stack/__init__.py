"""A local development stack without Docker: Apache Kafka (KRaft) and PostgreSQL as plain processes.

Kafka comes from its official artifacts on Maven Central, resolved by Maven into a cache outside
the repository and run with the machine's Java; PostgreSQL from the machine's server binaries.
"""
