"""Broker-level pieces: addresses, the failover connection, the names and declarations of what a
participant owns, header tables that can always be sent again.
"""
