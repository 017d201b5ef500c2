"""reelcdn.manifests"""
