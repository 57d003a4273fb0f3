"""captionlab.vision (see DESIGN.md)."""
