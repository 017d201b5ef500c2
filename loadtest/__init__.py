"""reelcdn.loadtest"""
