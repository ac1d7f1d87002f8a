"""data phase."""
