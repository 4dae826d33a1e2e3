"""`xdray teacher`: fine-tune the teacher on the source task."""
