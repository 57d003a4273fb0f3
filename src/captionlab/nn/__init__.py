"""captionlab.nn (see DESIGN.md)."""
