"""thoughts layer (see DESIGN §2)."""
