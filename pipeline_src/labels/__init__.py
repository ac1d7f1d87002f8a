"""labels phase."""
