"""porter's ground floor: what every other floor may import, importing nothing of porter's above
it and no torch, numpy or runtime: the error contract (``errors``), atomic writes (``atomic``),
file fingerprints (``digest``), the machine's CPU (``cpu``), the vocabulary (``vocab``), the
checks on numbers and cards (``limits``), installed distributions (``dists``) and porter's own
version (``version``)."""
