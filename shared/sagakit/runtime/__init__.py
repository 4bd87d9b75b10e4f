"""Running a participant: the participant API, the runtime that enforces the saga rules, retries,
parking, the breaker and the outbox relay.
"""
