"""blogtune.model"""
