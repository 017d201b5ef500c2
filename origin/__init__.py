"""reelcdn.origin"""
