"""Data only: ``tier.conf.tmpl``, one tier of the nginx 3-tier topology that
``reelcdn loadtest --compare-nginx`` runs (rendered by ``reelcdn.loadtest.compare``).

A package so that setuptools installs the template with it (``setup.py`` maps every folder with
an ``__init__.py`` to a ``reelcdn.*`` package, and ships its ``*.tmpl`` as package data);
without one, a non-editable install left the template out.
"""
