"""captionlab.captioning (see DESIGN.md)."""
