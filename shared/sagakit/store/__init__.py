"""A participant's local persistence: inbox, step log and outbox beside the service's own tables,
and their retention.
"""
