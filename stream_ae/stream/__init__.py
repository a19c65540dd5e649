"""The streaming edge: settings, message codec, broker helpers, and the runner that joins them.

Kafka clients are created lazily by the runner; importing this package opens no connection.
"""
