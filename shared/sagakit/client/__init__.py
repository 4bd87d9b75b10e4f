"""Talking to a flow from outside: starting and watching sagas, and the dead-letter tool."""
