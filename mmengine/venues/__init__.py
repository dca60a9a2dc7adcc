"""Venue protocols: one module per venue, each plugged into the shared transport."""
