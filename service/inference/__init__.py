"""Inference: the models on their device behind dynamic batchers, in this process or another.

``backend`` is what the HTTP side talks to and needs no torch; ``engine`` owns the models
(torch); ``remote`` and ``server`` carry the backend's calls between HTTP worker processes
and the one inference process per device, over a Unix socket in the ``wire`` format.
"""
