"""evaluation layer (see DESIGN §2)."""
