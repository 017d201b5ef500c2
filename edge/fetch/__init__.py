"""Fetching: the upstream contract (what a parent or an origin connector implements),
the HTTP upstream, parents chosen by rendezvous hashing, and the coalescer that shares one
fetch among every client asking for the same object."""
