"""training layer (see DESIGN §2)."""
