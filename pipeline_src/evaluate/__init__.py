"""evaluate phase."""
