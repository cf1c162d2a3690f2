"""dialogue layer (see DESIGN §2)."""
