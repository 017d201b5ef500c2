"""reelcdn.edge"""
