"""reelcdn: a tiered video edge / CDN layer."""
__version__ = "0.1.0"
