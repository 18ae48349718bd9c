"""Organisational units: the tree of the central agency and its regional and provincial offices."""
