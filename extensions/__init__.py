"""reelcdn.extensions"""
