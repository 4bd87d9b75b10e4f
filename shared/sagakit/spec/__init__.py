"""The choreography spec, its checker, and the AsyncAPI documents derived from it."""
