"""Signed URLs and cookies, checked at the node before the cache is consulted.

``verdict.py`` is the vocabulary every token format shares (what a request shows a verifier,
a grant, a refusal with its reason, the key ring); each format is a module of pure functions
beside it (``native``, ``akamai``, ``cloudfront``, ``nginx_md5``); ``gate.py`` applies a
node's ``[tokens]`` configuration to a request.
"""
