"""engines layer (see DESIGN §2)."""
