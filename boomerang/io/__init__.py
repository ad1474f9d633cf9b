"""I/O: checkpoint files, model loading, the offline teacher, layer-map and order files, stream builders."""
