"""The web page the origin API serves at ``/`` (``routes.py``; docs/web.md): plain HTML, a
script and a style sheet, with hls.js and tus-js-client vendored in ``vendor/``."""
