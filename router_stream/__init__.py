"""router-stream: a Kafka-native, stateful signal router."""

__version__ = "0.1.0"
