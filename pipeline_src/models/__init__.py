"""models phase."""
