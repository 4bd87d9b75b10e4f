"""The saga tracker of the order flow: a read model of every saga, and stuck-saga detection."""
