"""cidflow flows layer (see DESIGN.md); filled in by its issue."""
