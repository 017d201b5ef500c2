"""The feed service on the origin: ranked feeds, likes and follows, play counts from the edges.

``ranking.py`` is the policy (pure scoring functions, no I/O or clock), ``cursors.py`` the
signed page cursors, ``store.py`` the engagement store (SQLite), ``service.py`` the feed's
state beside the origin's (the candidate pool and the trending ranking, recomputed in the
background), ``api.py`` the routes. See docs/feed.md.
"""
