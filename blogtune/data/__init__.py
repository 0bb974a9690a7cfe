"""blogtune.data"""
