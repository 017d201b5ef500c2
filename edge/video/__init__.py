"""Video features of an edge: rendered playlists, CMCD, prefetch and CMSD, reached from
the node through one hook (``features.EdgeFeatures``)."""
