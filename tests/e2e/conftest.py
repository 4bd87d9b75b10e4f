"""The e2e tier: a real RabbitMQ, each service as its own process (fixtures: ../conftest.py)."""
