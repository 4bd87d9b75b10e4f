"""The inventory participant of the order-fulfilment saga."""
