"""cidflow node_agent layer (see DESIGN.md); filled in by its issue."""
