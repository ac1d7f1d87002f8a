"""train phase."""
