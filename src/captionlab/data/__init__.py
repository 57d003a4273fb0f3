"""captionlab.data (see DESIGN.md)."""
