"""The saga tracker: a read model of every saga, built from the events alone."""
