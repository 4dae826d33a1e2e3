"""`xdray data`: the offline sample datasets, the transfer sets, and the labeled-split tables steps read."""
