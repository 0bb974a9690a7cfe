"""blogtune.export"""
