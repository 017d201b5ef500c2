"""reelcdn.shield"""
